"""Mistakes a command can see without servers are reported at once, by flows.preflight, before Prefect or Dask start:
each bad input through `need` exits 1 with one line naming the problem, and the Prefect API is never entered."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from flows.cli import main
from storage.catalog import create_catalog

WEIGHTS = Path(__file__).resolve().parent.parent / "weights"


@pytest.fixture(autouse=True)
def no_servers(monkeypatch):
    """Fail the test if a command gets as far as starting the Prefect API."""

    @contextmanager
    def refuse():
        pytest.fail("the Prefect API was started: the mistake was not caught before start-up")
        yield

    monkeypatch.setattr("flows.runtime.shared_prefect_api", refuse)
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")


@pytest.fixture
def catalog(tmp_path):
    return str(create_catalog(tmp_path / "cat.zarr").path)


@pytest.fixture
def npy_source(tmp_path):
    import numpy as np

    path = tmp_path / "src" / "ct.npy"
    path.parent.mkdir()
    np.save(path, np.zeros((2, 8, 8), np.float32))
    return str(path)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def refused(argv: list[str], capsys) -> str:
    """Run `need argv`; it must exit 1 with one `need CMD: error:` line, returned."""
    assert main(argv) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"need {argv[0]}: error: "), lines
    return lines[0]


def reconstruct_args(catalog: str, *extra: str) -> list[str]:
    return [
        "reconstruct",
        catalog,
        "--doses",
        "0.25",
        "--spdiff",
        str(WEIGHTS / "spdiff_cpu.pt"),
        "--dgdiff",
        str(WEIGHTS / "dgdiff_cpu.pt"),
        "--no-tracking",
        *extra,
    ]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--chunk-slices", "0"], "--chunk-slices) must be at least 1 slice, got 0"),
        (["--workers", "0"], "--workers must be at least 1, got 0"),
        (["--seed", "-1"], "--seed must be a whole number >= 0, got -1"),
        (
            ["--dask-address", "tcp://127.0.0.1:{port}"],
            "Dask scheduler --dask-address tcp://127.0.0.1:{port} is unreach",
        ),
    ],
)
def test_bad_ingest_numbers_and_addresses(extra, message, npy_source, tmp_path, capsys):
    port = str(closed_port())
    extra = [part.replace("{port}", port) for part in extra]
    line = refused(["ingest", npy_source, str(tmp_path / "new.zarr"), "--spacing", "1,1,1", *extra], capsys)
    assert message.replace("{port}", port) in line
    assert not (tmp_path / "new.zarr").exists()  # nothing was created


def test_bad_sources(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README.txt").write_text("no scans here\n")
    line = refused(["ingest", str(tmp_path / "notes"), str(tmp_path / "new.zarr")], capsys)
    assert f"source {tmp_path / 'notes'} holds no DICOM file or volume" in line
    line = refused(["ingest", str(tmp_path / "missing"), str(tmp_path / "new.zarr")], capsys)
    assert f"source {tmp_path / 'missing'} does not exist" in line


def test_dicom_without_preamble_is_a_source(tmp_path):
    import pydicom
    from pydicom.data import get_testdata_file

    from storage.source_files import first_candidate

    image = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    image.preamble = None
    del image.file_meta
    image.save_as(tmp_path / "IM1", enforce_file_format=False)
    (tmp_path / "README").write_text("text\n")
    assert first_candidate(tmp_path) == tmp_path / "IM1"


def test_bad_catalogs(catalog, npy_source, tmp_path, capsys):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data.csv").write_text("1,2\n")
    assert "is neither a NEED catalog nor a NEED archive" in refused(["ingest", npy_source, str(foreign)], capsys)
    assert f"no catalog at {tmp_path / 'none.zarr'}" in refused(reconstruct_args(str(tmp_path / "none.zarr")), capsys)
    for command in (["info"], ["verify"], ["evaluate", "--no-tracking"]):
        line = refused([command[0], str(tmp_path / "none.zarr"), *command[1:]], capsys)
        assert "no catalog at" in line
    assert "no catalog at" in refused(["migrate", str(tmp_path / "none.zarr")], capsys)


def test_bad_checkpoints_and_slices(catalog, tmp_path, capsys):
    line = refused(reconstruct_args(catalog, "--spdiff", str(tmp_path / "missing.pt")), capsys)
    assert f"--spdiff: checkpoint not found: {tmp_path / 'missing.pt'}" in line
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    line = refused(reconstruct_args(catalog, "--dgdiff", str(tmp_path / "junk.pt")), capsys)
    assert "--dgdiff: checkpoint" in line and "corrupt" in line
    line = refused(reconstruct_args(catalog, "--dgdiff", str(WEIGHTS / "spdiff_cpu.pt")), capsys)
    assert "holds a 'spdiff' model, expected 'dgdiff'" in line
    assert "--slices selects no slice" in refused(reconstruct_args(catalog, "--slices", "5-3"), capsys)
    assert "--steps must be at least 1" in refused(["train", catalog, "--model", "spdiff", "--steps", "0"], capsys)


def test_bad_tracking_stores(catalog, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'missing' / 'mlflow.db'}")
    line = refused(["evaluate", catalog], capsys)
    assert f"directory {tmp_path / 'missing'} does not exist" in line and "--no-tracking" in line
    args = reconstruct_args(catalog, "--spdiff", "models:/need-spdiff@production")
    line = refused(args, capsys)  # --no-tracking, but the registry is needed
    assert "does not exist" in line and "--spdiff models:/need-spdiff@production is looked up" in line
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{closed_port()}")
    assert "is unreachable" in refused(["train", catalog, "--model", "dgdiff"], capsys)


CHECK_PRESENT = """
import sys
from flows.preflight import check_checkpoint_present
for reference in sys.argv[1:]:
    try:
        check_checkpoint_present(reference, "--spdiff")
        print("ok")
    except (OSError, ValueError) as err:
        print(err)
print(sorted({"torch", "mlflow"} & set(sys.modules)))
"""


def test_missing_checkpoints_and_unregistered_models_are_found_without_torch_or_mlflow(tmp_path):
    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    references = [str(tmp_path / "missing.pt"), "models:/need-spdiff/3", "models:/need-dgdiff@production"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": store}
    command = [sys.executable, "-c", CHECK_PRESENT, *references]
    before = subprocess.run(command, capture_output=True, text=True, env=env, check=True).stdout.splitlines()
    assert before[0] == f"--spdiff: checkpoint not found: {tmp_path / 'missing.pt'}"
    assert before[1] == (
        f"--spdiff: no registered model version for models:/need-spdiff/3 in {store}: no model 'need-spdiff' there"
    )
    assert "no model 'need-dgdiff' there" in before[2] and before[3] == "[]"
    MlflowClient(store, registry_uri=store).create_registered_model("need-spdiff")
    after = subprocess.run(command, capture_output=True, text=True, env=env, check=True).stdout.splitlines()
    assert after[1] == "ok"  # registered: whether version 3 exists, MLflow tells (check_checkpoint)
    assert "no model 'need-dgdiff' there" in after[2] and after[3] == "[]"


def without_write_permission(argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    """Run `need argv` in a child that permission bits apply to (root ignores them: it runs without
    CAP_DAC_OVERRIDE), with Prefect pointed at a closed port."""
    command = [sys.executable, "-c", "import sys; from flows.cli import main; sys.exit(main(sys.argv[1:]))", *argv]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: cannot make a folder read-only for this process")
        caps = "-dac_override,-dac_read_search"
        command = [setpriv, f"--bounding-set={caps}", f"--inh-caps={caps}", *command]
    env = {**os.environ, "PREFECT_API_URL": f"http://127.0.0.1:{closed_port()}/api", **env}
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)


@contextmanager
def read_only(*folders: Path):
    """The folders (and what is in them) without write permission for the block."""
    paths = [path for folder in folders for path in [folder, *folder.rglob("*")]]
    modes = {path: path.stat().st_mode for path in paths}
    for path in paths:
        path.chmod(modes[path] & ~0o222)
    try:
        yield
    finally:
        for path in reversed(paths):
            path.chmod(modes[path])


def test_read_only_catalog_and_tracking_store(catalog, npy_source, tmp_path):
    with read_only(Path(catalog)):
        done = without_write_permission(["ingest", npy_source, catalog, "--spacing", "1,1,1"])
        assert done.returncode == 1 and f"need ingest: error: catalog {catalog} is not writable" in done.stderr
        done = without_write_permission(["split", catalog])
        assert done.returncode == 1 and f"catalog {catalog} is not writable" in done.stderr
    store = tmp_path / "mlflow"
    store.mkdir()
    with read_only(store):
        done = without_write_permission(["evaluate", catalog], MLFLOW_TRACKING_URI=f"sqlite:///{store / 'mlflow.db'}")
        assert done.returncode == 1 and "its directory" in done.stderr and "is not writable" in done.stderr
        assert "--no-tracking" in done.stderr


def test_a_bad_sampling_profile_is_refused_before_any_compute(catalog, tmp_path, capsys):
    line = refused(reconstruct_args(str(catalog), "--sampling", str(tmp_path / "missing.json")), capsys)
    assert "cannot read sampling profile" in line and "missing.json" in line
    (tmp_path / "bad.json").write_text('{"doses": [{"dose": 7}]}')
    assert "not a sampling profile" in refused(
        reconstruct_args(str(catalog), "--sampling", str(tmp_path / "bad.json")), capsys
    )
