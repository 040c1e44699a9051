"""bench/cohort.py's synthetic catalog and planner on 3 studies (no timing assertions): the ledger mix is what the
planner sees, the shipped SPDiff fits the synthetic studies, and zarr array opens do not grow with slices."""

from __future__ import annotations

import numpy as np

from bench.cohort import build_synthetic_catalog, plan_cohort, shipped_models, store_counter
from storage.catalog import open_catalog
from storage.ledger import DONE


def test_synthetic_catalog_plans_every_slice_not_done_by_the_models(tmp_path):
    models = shipped_models()
    opens = {}
    for n_slices in (10, 20):
        path = tmp_path / f"c{n_slices}.zarr"
        build_synthetic_catalog(path, 3, n_slices, [0.5, 0.25], 4, models)
        with store_counter() as counts:
            plans, times = plan_cohort(path, models, chunk_slices=4, dose=0.25)
        opens[n_slices] = counts["array_opens"]
        assert set(times) == {"open_s", "plan_s"}
        catalog = open_catalog(path)
        assert len(plans) == 3 and all(row.ingest == "done" for row in catalog.rows())
        for key, plan in plans.items():
            assert not plan.refused
            archive = catalog.study(key)
            states, producers = archive.ledger("reconstruct", dose=0.25), archive.produced_by("reconstruct", dose=0.25)
            expected = [s for s in range(n_slices) if states[s] != DONE or producers[s] != plan.result_key]
            assert sorted(s for cell in plan.cells[0.25] for s in cell.todo) == expected
            assert all(cell.cell.start % 4 == 0 for cell in plan.cells[0.25])
            assert not np.any(archive.ledger("ingest_ld") != DONE)
    assert opens[10] == opens[20]
