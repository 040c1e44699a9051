"""An installed package carries the shipped weights: a wheel holds weights/*.pt and the model card as data files
(<prefix>/share/need-pipeline/weights), and flows.models finds them there when there is no checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from flows.models import DATA_FOLDER, SHIPPED_FILES

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "need_core", "storage", "tasks", "flows", "weights")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the sources (the build writes build/ and egg-info beside them)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", ".", "-w", str(root)]
    subprocess.run(command, cwd=source, check=True, capture_output=True, timeout=300)
    (built,) = root.glob("need_pipeline-*.whl")
    return built


def test_the_wheel_holds_the_shipped_weights_and_the_model_card(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    data = f"need_pipeline-0.1.0.data/data/{DATA_FOLDER}/weights"
    shipped = (*SHIPPED_FILES.values(), "MODEL_CARD.md", "training_runs.json", "sampling_428598fa_5a741b2b.json")
    expected = {f"{data}/{name}" for name in shipped}
    assert expected <= names
    assert "flows/tracking/pyfunc_entry.py" in names  # the entry registered MLflow models load through
    sizes = {info.filename: info.file_size for info in zipfile.ZipFile(wheel).infolist()}
    assert sizes[f"{data}/spdiff_cpu.pt"] == (ROOT / "weights" / "spdiff_cpu.pt").stat().st_size


@pytest.mark.slow
def test_an_installed_package_finds_its_weights_without_a_checkout(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)]
    subprocess.run(install, check=True, capture_output=True, timeout=300)
    probe = "import flows, flows.models as m; print(flows.__file__); print(m.shipped_weights_dir())"
    out = subprocess.run(
        [str(python), "-c", probe],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
        env={**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "MLFLOW_TRACKING_URI": "sqlite:///none.db"},
    ).stdout.split()
    assert out[0].startswith(str(venv)), f"flows imported from {out[0]}, not the installed wheel"
    assert Path(out[1]) == venv / DATA_FOLDER / "weights"
    assert all((Path(out[1]) / name).is_file() for name in SHIPPED_FILES.values())
