"""`need pull` / `need push` against a real Orthanc over DICOMweb: QIDO finds the CT series, a pull ingests them
de-identified and deletes the staged files, a cut-off retrieval resumes with the missing instances only, and every
bad input fails in one line naming the server, study or series, with nothing written to the catalog."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.cli import main
from flows.pacs import pull, staging_folder
from storage.catalog import open_catalog
from storage.catalog_paths import lock_root
from storage.dicomweb import NoCtSeries, RemoteSeries, connect
from tests.orthanc_server import PASSWORD, free_port, orthanc, write_study  # noqa: F401 (orthanc: a fixture)

DOSES = (0.25,)


@pytest.fixture(scope="module")
def pacs(orthanc, head_ct_path, tmp_path_factory):  # noqa: F811 (the fixture imported above)
    """Orthanc holding: `ct` (an axial CT series of 4 slices and a localizer, dated 2024-01-05), `resume` (another
    axial CT, 2023), `mr` (MR only), `mixed` (a CT series with one 32x32 slice among 64x64 ones)."""
    root = tmp_path_factory.mktemp("pacs-src")
    studies = {
        "ct": write_study(
            head_ct_path,
            root,
            "ct",
            "PHI-PACS-1",
            {"axial": {"first_slice": 44}, "scout": {"first_slice": 60, "n_slices": 1, "image_type": "LOCALIZER"}},
        ),
        "resume": write_study(head_ct_path, root, "resume", "PHI-PACS-2", {"axial": {"first_slice": 20}}, "20230301"),
        "mr": write_study(head_ct_path, root, "mr", "PHI-PACS-3", {"mr": {"first_slice": 10, "modality": "MR"}}),
        "mixed": write_study(
            head_ct_path, root, "mixed", "PHI-PACS-4", {"axial": {"first_slice": 30, "small_slice": 1}}, "20220101"
        ),
    }
    orthanc.upload(root)
    return studies


def pull_study(orthanc, catalog: Path, study_uid: str, dask_address: str) -> dict:  # noqa: F811
    return pull(
        url=orthanc.dicomweb,
        catalog=str(catalog),
        study=study_uid,
        doses=DOSES,
        chunk_slices=2,
        dask_address=dask_address,
    )


def fail_line(capsys, argv: list[str]) -> str:
    """Run `need ...` expecting the one-line error; return it."""
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "no error printed"
    return err[-1]


def test_qido_finds_the_ct_series_by_study_and_by_date(orthanc, pacs):  # noqa: F811
    client = connect(orthanc.dicomweb)
    by_study = client.search_ct_series(study=pacs["ct"].study_uid)
    assert {s.series_uid for s in by_study} == set(pacs["ct"].series.values())  # the localizer is CT too
    assert all(s.modality == "CT" and s.instances in (1, 4) for s in by_study)
    by_date = client.search_ct_series(since="20240101", until="20240110")
    assert {s.study_uid for s in by_date} == {pacs["ct"].study_uid}
    assert {s.study_uid for s in client.search_ct_series(since="20230101")} == {
        pacs["ct"].study_uid,
        pacs["resume"].study_uid,
    }
    with pytest.raises(NoCtSeries, match=f"study {pacs['mr'].study_uid} on .* has no CT series \\(only MR\\)"):
        client.search_ct_series(study=pacs["mr"].study_uid)


def test_pull_ingests_de_identified_skips_the_scout_and_deletes_the_staged_files(
    orthanc,  # noqa: F811
    pacs,
    tmp_path,
    capsys,
    prefect_harness,
    dask_address,
):
    catalog = tmp_path / "pacs.zarr"
    summary = pull_study(orthanc, catalog, pacs["ct"].study_uid, dask_address)
    key = RemoteSeries(pacs["ct"].study_uid, pacs["ct"].series["axial"], "CT", "", None).key
    (row,) = open_catalog(catalog).rows()
    assert summary["studies"] == [key] and row.study == key and row.ingest == "done" and row.slices == 4
    assert summary["retrieved"][key] == 4 and len(summary["skipped"]) == 1
    assert "localizer/scout series" in next(iter(summary["skipped"].values()))
    staged = lock_root(catalog) / "pull"
    assert not staged.exists() or not any(staged.iterdir()), "staged raw files (patient identifiers) were left"
    stored = b"".join(path.read_bytes() for path in catalog.rglob("*") if path.is_file())
    assert b"PHI-PACS-1" not in stored and pacs["ct"].study_uid.encode() not in stored
    again = pull_study(orthanc, catalog, pacs["ct"].study_uid, dask_address)  # nothing new: nothing retrieved
    assert key not in again["retrieved"] and again["already_ingested"] == [key]  # (the scout is looked at again)
    assert sum(again["retrieved"].values()) == 1
    window = ["--since", "20240101", "--until", "20240110", "--doses", "0.25", "--dask-address", dask_address]
    assert main(["pull", orthanc.dicomweb, str(catalog), *window]) == 0
    printed = capsys.readouterr().out
    assert f"{orthanc.dicomweb}: 1 CT series in catalog {catalog}" in printed and "1 already ingested" in printed


def test_a_retrieval_cut_off_midway_resumes_with_the_missing_instances(
    orthanc,  # noqa: F811
    pacs,
    tmp_path,
    prefect_harness,
    dask_address,
):
    catalog = tmp_path / "pacs.zarr"
    client = connect(orthanc.dicomweb)
    (series,) = client.search_ct_series(study=pacs["resume"].study_uid)
    folder = staging_folder(catalog, series.series_uid)
    first = client.retrieve_series(series, folder)
    assert first.fetched == 4
    for path in first.files[:2]:  # cut off after two instances, the third half written
        path.unlink()
    (folder / "x.dcm.part").write_bytes(first.files[2].read_bytes()[:300])
    summary = pull_study(orthanc, catalog, pacs["resume"].study_uid, dask_address)
    key = series.key
    assert summary["retrieved"] == {key: 2}
    assert open_catalog(catalog).row(key).slices == 4 and not folder.exists()


def test_bad_servers_fail_in_one_line_naming_the_server(orthanc, pacs, tmp_path, capsys, monkeypatch, prefect_harness):  # noqa: F811
    catalog = tmp_path / "never.zarr"
    study = ["--study", pacs["ct"].study_uid]
    nobody = f"http://127.0.0.1:{free_port()}/dicom-web"
    line = fail_line(capsys, ["pull", nobody, str(catalog), *study])
    assert line.startswith(f"need pull: error: cannot reach the DICOMweb server {nobody} (connection refused")
    line = fail_line(capsys, ["pull", f"{orthanc.url}/no-dicom-web", str(catalog), *study])
    assert "answered HTTP 404" in line and "not a DICOMweb service" in line
    monkeypatch.delenv("NEED_DICOMWEB_USER")
    line = fail_line(capsys, ["pull", orthanc.dicomweb, str(catalog), *study])
    assert "refused the credentials (HTTP 401)" in line and "set NEED_DICOMWEB_USER and NEED_DICOMWEB_PASSWORD" in line
    monkeypatch.setenv("NEED_DICOMWEB_USER", "need-test")
    monkeypatch.setenv("NEED_DICOMWEB_PASSWORD", "wrong")
    line = fail_line(capsys, ["pull", orthanc.dicomweb, str(catalog), *study])
    assert "check NEED_DICOMWEB_USER" in line and "wrong" not in line and PASSWORD not in line
    line = fail_line(capsys, ["push", str(catalog), nobody, "--dose", "0.25"])
    assert f"cannot reach the DICOMweb server {nobody}" in line
    assert not catalog.exists() and not lock_root(catalog).exists()


def test_bad_queries_fail_in_one_line_and_write_nothing(orthanc, pacs, tmp_path, capsys, prefect_harness):  # noqa: F811
    catalog = tmp_path / "never.zarr"
    line = fail_line(capsys, ["pull", orthanc.dicomweb, str(catalog), "--study", pacs["mr"].study_uid])
    assert f"study {pacs['mr'].study_uid} on {orthanc.dicomweb} has no CT series (only MR)" in line
    line = fail_line(capsys, ["pull", orthanc.dicomweb, str(catalog), "--study", "1.2.3.4.5"])
    assert f"{orthanc.dicomweb} holds no study 1.2.3.4.5" in line
    line = fail_line(capsys, ["pull", orthanc.dicomweb, str(catalog), "--since", "19990101", "--until", "19991231"])
    assert "holds no CT series dated 19990101-19991231" in line
    with pytest.raises(SystemExit):
        main(["pull", orthanc.dicomweb, str(catalog), "--since", "20241345"])
    assert "argument --since: '20241345' is not a calendar date (YYYYMMDD)" in capsys.readouterr().err
    assert not catalog.exists() and not lock_root(catalog).exists()


def test_a_series_of_mixed_sizes_is_named_and_keeps_its_files(orthanc, pacs, tmp_path, capsys, prefect_harness):  # noqa: F811
    catalog = tmp_path / "never.zarr"
    line = fail_line(capsys, ["pull", orthanc.dicomweb, str(catalog), "--study", pacs["mixed"].study_uid])
    uid = pacs["mixed"].series["axial"]
    key = RemoteSeries(pacs["mixed"].study_uid, uid, "CT", "", None).key
    assert f"(CT, {key}): slices have different sizes" in line
    assert uid not in line  # the message (and so Prefect's log) names the series by its pseudonymous key
    assert "different sizes [(32, 32), (64, 64)]" in line
    assert not catalog.exists()
    assert len(list(staging_folder(catalog, uid).iterdir())) == 4  # kept for the rerun, nothing lost


def test_push_of_a_study_without_results_stores_nothing(orthanc, pacs, tmp_path, capsys, prefect_harness, dask_address):  # noqa: F811
    catalog = tmp_path / "pacs.zarr"
    summary = pull_study(orthanc, catalog, pacs["resume"].study_uid, dask_address)
    before = orthanc.get("/series").json()
    line = fail_line(
        capsys, ["push", str(catalog), orthanc.dicomweb, "--dose", "0.25", "--studies", summary["studies"][0]]
    )
    assert line.startswith("need push: error: ") and summary["studies"][0] in line
    assert orthanc.get("/series").json() == before
