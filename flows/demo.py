"""The one-command demo on the bundled real head CT: ingest, simulate four doses, reconstruct the held-out slices.

Until the trained models land, it reports the model-free baselines (low-dose FBP, ramp and Hann filters)
against the normal-dose image, and writes comparison panels.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from flows.ingest import DEFAULT_DOSES, ingest, validate_doses
from need_core.display import comparison_panel
from need_core.reporting import format_quality_table
from storage.readers import BUNDLED_HEAD_CT
from storage.splits import HEAD_CT_SPLIT
from tasks.baselines import fbp_baseline_rows

PANEL_SLICE = 55  # a held-out slice through the brain


@flow(name="demo", task_runner=ThreadPoolTaskRunner(max_workers=os.cpu_count()))
def demo(workdir: str = "outputs/demo", doses: list[float] = list(DEFAULT_DOSES), seed: int = 0) -> list[dict[str, Any]]:
    """Ingest the head CT into `workdir`, then score and picture the baselines on its held-out slices."""
    logger = get_run_logger()
    doses = validate_doses(doses)
    out = Path(workdir)
    archive_path = str(out / "head_ct.zarr")
    ingest(source=str(BUNDLED_HEAD_CT), archive=archive_path, doses=doses, seed=seed)
    heldout = list(HEAD_CT_SPLIT.heldout)
    futures = {dose: fbp_baseline_rows.submit(archive_path, dose, heldout) for dose in doses}
    rows: list[dict[str, Any]] = []
    for dose, future in futures.items():
        dose_rows, images = future.result()
        rows.extend(dose_rows)
        at = heldout.index(PANEL_SLICE)
        panel = comparison_panel(
            images["reference"][at],
            {name: image[at] for name, image in images.items() if name != "reference"},
            out / f"panel_dose{dose:g}.png",
            title=f"head CT slice {PANEL_SLICE}, dose {dose:g}",
        )
        logger.info("panel written: %s", panel)
    (out / "metrics.json").write_text(json.dumps(rows, indent=2))
    print(format_quality_table(rows))
    print(f"\npanels and metrics.json in {out.resolve()}")
    return rows
