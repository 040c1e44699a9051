"""`need export`: results out of a catalog as derived DICOM CT series and NIfTI, checked with dciodvfy, re-read with
the project's readers, and searched byte by byte for the source's identifiers.

The catalog is built from a real head-CT DICOM series (tilted, off-centre) through the DICOM reader, plus a volume
without source geometry; results are written and marked through the Archive API, as reconstruct writes them, so
the tests run in seconds without Prefect.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from need_core.physics import FanBeamGeometry, PhysicsSettings
from storage.catalog import Catalog, create_catalog, open_catalog, row_for_archive
from storage.deid import study_key
from storage.dicom_series_writer import Rescale, SliceGrid, ct_template, slice_normal, write_ct_slices
from storage.examples import HU_RANGE
from storage.export import MANIFEST, ExportError, export_results
from storage.readers import read_volume
from storage.readers.dicom import read_dicom_folder
from storage.readers.nifti import read_nifti
from tests.system_tools import require_tool

PHI = {"PatientID": "PHI-EXPORT-0042", "PatientName": "Secret^Person", "PatientBirthDate": "19510731"}
TILT = np.radians(7.0)
ORIENTATION = (1.0, 0.0, 0.0, 0.0, float(np.cos(TILT)), float(-np.sin(TILT)))  # gantry tilted 7 degrees
ORIGIN_MM = (-121.6, -98.2, 41.5)
N_SLICES = 5
PRODUCED_BY = "spdiff:0123456789abcdef/dgdiff:fedcba9876543210/abcdef012345"
PARTIAL = [0, 1, 3]  # slices done at dose 0.1
# What dciodvfy still says about an export, and why it stays: the derived study has no date of its own (type 2,
# left empty rather than invented), the pseudonym is a one-component name (shown as it is by viewers), and the body
# part is unknown.
ALLOWED_WARNINGS = {
    "Warning - Missing attribute or value that would be needed to build DICOMDIR - Study Date",
    "Warning - Missing attribute or value that would be needed to build DICOMDIR - Study Time",
    "Warning - Value dubious for this VR - (0x0010,0x0010) PN Patient's Name  PN [1] = <{key}> - Retired Person "
    "Name form",
    "Warning - is only permitted to be empty when actually unknown; should be absent (not empty) if an unpaired "
    "body part, and have a value if a paired body part - attribute <Laterality>",
}


def write_source_series(head_ct_path: Path, folder: Path) -> Path:
    """Five real head-CT slices (64x64, 3.8 mm pixels, 3 mm apart) as a tilted, off-centre CT series carrying
    identifiers that must never reach an export."""
    hu = read_volume(head_ct_path).hu[40 : 40 + N_SLICES].reshape(N_SLICES, 64, 4, 64, 4).mean(axis=(2, 4))
    template = ct_template()
    for keyword, value in PHI.items():
        setattr(template, keyword, value)
    template.StudyInstanceUID, template.SeriesInstanceUID = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    template.FrameOfReferenceUID = pydicom.uid.generate_uid()
    template.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    first = float(np.asarray(ORIGIN_MM) @ slice_normal(ORIENTATION))
    grid = SliceGrid.along_normal(first + 3.0 * np.arange(N_SLICES), ORIGIN_MM, ORIENTATION, (3.8, 3.8), 3.0)
    write_ct_slices(folder, np.clip(np.rint(hu), *HU_RANGE), grid, template, Rescale(1.0, -1024.0))
    return folder


def add_study(catalog: Catalog, key: str, hu: np.ndarray, spacing, z_mm, source: dict) -> None:
    """A study as ingest builds it (image_hu, geometry for its matrix), doses 0.25, 0.1, 0.05, marked ingested."""
    geometry = FanBeamGeometry.for_image(hu.shape[1:], spacing[1:])
    archive = catalog.create_study(
        key,
        image_hu=hu,
        spacing_mm=spacing,
        z_mm=z_mm,
        doses=[0.25, 0.1, 0.05],
        geometry=geometry.to_dict(),
        physics=PhysicsSettings().to_dict(),
        seed=0,
        source=source,
        sinogram_shape=geometry.sinogram_shape,
    )
    catalog.upsert([row_for_archive(key, archive, ingest="done")])


def write_results(catalog: Catalog, key: str, dose: float, slices: list[int], seed: int) -> None:
    """Results (image + non-integer noise) for `slices` at `dose`, data first, then the ledger, as reconstruct does."""
    archive = catalog.study(key, "r+")
    rng = np.random.default_rng(seed)
    image = archive.read("image_hu", 0, archive.n_slices)
    for s in slices:
        for name in ("fbp_ld", "spdiff_fbp", "need"):
            archive.write(name, s, (image[s : s + 1] + rng.normal(0, 20, image[s : s + 1].shape)), dose=dose)
    archive.mark("reconstruct", slices, "done", dose=dose, produced_by=PRODUCED_BY)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, head_ct_path) -> dict:
    """A catalog of two studies: `dicom` (from the tilted series; test split; results at 0.25 for every slice, at
    0.1 for PARTIAL, none at 0.05; fbp_nd ingested) and `plain` (no source geometry, like .npy; train split)."""
    root = tmp_path_factory.mktemp("export")
    series = write_source_series(head_ct_path, root / "source")
    volume = read_dicom_folder(series)
    first = pydicom.dcmread(sorted(series.iterdir())[0])
    catalog = create_catalog(root / "cohort.zarr")
    dicom_key = study_key("dicom-series", str(first.SeriesInstanceUID))
    add_study(catalog, dicom_key, volume.hu, volume.spacing_mm, volume.z_mm, {**volume.source, "subject_key": "s1"})
    plain_key = study_key("npy", "plain")
    add_study(catalog, plain_key, volume.hu[:3], (2.0, 1.5, 1.25), [10.0, 12.0, 14.0], {"format": "npy"})
    catalog.assign_splits({dicom_key: "test", plain_key: "train"})
    write_results(catalog, dicom_key, 0.25, list(range(N_SLICES)), seed=1)
    write_results(catalog, dicom_key, 0.1, PARTIAL, seed=2)
    write_results(catalog, plain_key, 0.25, [0, 1, 2], seed=3)
    archive = catalog.study(dicom_key, "r+")
    archive.write("fbp_nd", 0, archive.read("image_hu", 0, N_SLICES) + 0.3)
    archive.mark("ingest", range(N_SLICES), "done", produced_by=archive.settings_hash)
    identifiers = [*PHI.values()]
    for path in series.iterdir():
        image = pydicom.dcmread(path)
        identifiers += [str(image.get(k)) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")]
        identifiers.append(str(image.FrameOfReferenceUID))
    return {
        "catalog": root / "cohort.zarr",
        "source": series,
        "dicom": dicom_key,
        "plain": plain_key,
        "identifiers": sorted(set(identifiers)),
    }


def stored(cohort: dict, key: str, method: str, dose: float | None) -> np.ndarray:
    archive = open_catalog(cohort["catalog"]).study(key)
    return archive.read(method, 0, archive.n_slices, dose=dose)


def dciodvfy_messages(path: Path) -> list[str]:
    result = subprocess.run([require_tool("dciodvfy", "dicom3tools"), str(path)], capture_output=True, text=True)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith(("Error", "Warning"))]


def test_dicom_export_round_trips_hu_and_geometry_and_passes_dciodvfy(tmp_path, cohort):
    (series,) = export_results(cohort["catalog"], tmp_path, "need", 0.25, studies=[cohort["dicom"]])
    assert (series.study, series.method, series.dose, series.slices, series.total_slices) == (
        cohort["dicom"],
        "need",
        0.25,
        N_SLICES,
        N_SLICES,
    )
    assert series.path == tmp_path / cohort["dicom"] / "need_0.25"
    assert sorted(series.files) == sorted(series.path.iterdir()) and len(series.files) == N_SLICES
    allowed = {line.format(key=cohort["dicom"]) for line in ALLOWED_WARNINGS}
    for path in series.files:
        messages = dciodvfy_messages(path)
        assert not [line for line in messages if line.startswith("Error")], (path.name, messages)
        assert set(messages) <= allowed, set(messages) - allowed

    again = read_dicom_folder(series.path)
    source = read_dicom_folder(cohort["source"])
    assert np.abs(again.hu - stored(cohort, cohort["dicom"], "need", 0.25)).max() <= 0.5
    assert np.allclose(again.spacing_mm, source.spacing_mm) and np.allclose(again.z_mm, source.z_mm)
    assert np.allclose(again.source["orientation"], ORIENTATION, atol=1e-6)
    assert np.allclose(again.source["origin_mm"], ORIGIN_MM, atol=1e-4)
    for exported, original in zip(sorted(series.files), sorted(cohort["source"].iterdir()), strict=True):
        image, before = pydicom.dcmread(exported), pydicom.dcmread(original)
        assert np.allclose([float(v) for v in image.ImagePositionPatient], before.ImagePositionPatient, atol=1e-4)

    images = [pydicom.dcmread(path) for path in series.files]
    first = images[0]
    assert list(first.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
    assert first.PatientID == first.PatientName == cohort["dicom"]
    assert first.SeriesDescription == "NEED 25% dose spdiff 01234567 dgdiff fedcba98"
    assert "NEED low-dose" in first.DerivationDescription and PRODUCED_BY in first.DerivationDescription
    assert (float(first.WindowCenter), float(first.WindowWidth)) == (40.0, 400.0)
    assert {image.SeriesInstanceUID for image in images} == {series.series_uid}
    assert len({image.SOPInstanceUID for image in images}) == N_SLICES
    assert len({image.FrameOfReferenceUID for image in images}) == 1
    manifest = json.loads((tmp_path / MANIFEST).read_text())["series"]
    assert [(m["study"], m["method"], m["dose"], m["series_uid"], m["slices"]) for m in manifest] == [
        (cohort["dicom"], "need", 0.25, series.series_uid, N_SLICES)
    ]


def test_no_source_identifier_in_any_exported_byte(tmp_path, cohort):
    exported = export_results(cohort["catalog"], tmp_path / "a", "need", 0.25)
    exported += export_results(cohort["catalog"], tmp_path / "b", "image_hu", None, fmt="dicom")
    exported += export_results(cohort["catalog"], tmp_path / "c", "need", 0.25, fmt="nifti")
    files = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert len(files) > 2 * (N_SLICES + 3)
    for path in files:
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = nib.load(path).header.binaryblock + data
        leaked = [identifier for identifier in cohort["identifiers"] if identifier.encode() in data]
        assert not leaked, (path, leaked)


def test_one_study_uid_per_study_across_methods_and_doses(tmp_path, cohort):
    need = export_results(cohort["catalog"], tmp_path, "need", 0.25, studies=[cohort["dicom"]])[0]
    reference = export_results(cohort["catalog"], tmp_path, "fbp_nd", None, studies=[cohort["dicom"]])[0]
    plain = export_results(cohort["catalog"], tmp_path, "need", 0.25, studies=[cohort["plain"]])[0]
    first = {name: pydicom.dcmread(s.files[0]) for name, s in (("need", need), ("nd", reference), ("plain", plain))}
    assert first["need"].StudyInstanceUID == first["nd"].StudyInstanceUID != first["plain"].StudyInstanceUID
    assert first["need"].FrameOfReferenceUID == first["nd"].FrameOfReferenceUID
    assert first["need"].SeriesInstanceUID != first["nd"].SeriesInstanceUID
    assert first["nd"].SeriesDescription == "ND FBP"
    assert np.abs(read_dicom_folder(reference.path).hu - stored(cohort, cohort["dicom"], "fbp_nd", None)).max() <= 0.5


def test_study_without_source_geometry_is_axial_and_centred(tmp_path, cohort):
    (series,) = export_results(cohort["catalog"], tmp_path, "fbp_ld", 0.25, split="train")
    assert series.study == cohort["plain"]
    images = [pydicom.dcmread(path) for path in sorted(series.files)]
    assert [float(v) for v in images[0].ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    positions = np.array([[float(v) for v in image.ImagePositionPatient] for image in images])
    assert np.allclose(positions, [[-63 / 2 * 1.25, -63 / 2 * 1.5, z] for z in (10.0, 12.0, 14.0)])
    assert float(images[0].SliceThickness) == 2.0 and [float(v) for v in images[0].PixelSpacing] == [1.5, 1.25]
    for path in series.files:
        assert not [line for line in dciodvfy_messages(path) if line.startswith("Error")]


def test_partial_study_exports_its_done_slices_at_their_positions(tmp_path, cohort):
    (series,) = export_results(cohort["catalog"], tmp_path, "need", 0.1, studies=[cohort["dicom"]])
    assert (series.slices, series.total_slices) == (len(PARTIAL), N_SLICES)
    assert sorted(path.name for path in series.path.iterdir()) == [f"IM{s + 1:04d}.dcm" for s in PARTIAL]
    source = sorted(cohort["source"].iterdir())
    reference = stored(cohort, cohort["dicom"], "need", 0.1)
    for s in PARTIAL:
        image = pydicom.dcmread(series.path / f"IM{s + 1:04d}.dcm")
        assert int(image.InstanceNumber) == s + 1
        assert np.allclose(
            [float(v) for v in image.ImagePositionPatient], pydicom.dcmread(source[s]).ImagePositionPatient
        )
        hu = image.pixel_array * float(image.RescaleSlope) + float(image.RescaleIntercept)
        assert np.abs(hu - reference[s]).max() <= 0.5

    (volume,) = export_results(cohort["catalog"], tmp_path, "need", 0.1, studies=[cohort["dicom"]], fmt="nifti")
    data = np.asarray(nib.load(volume.path).dataobj).transpose(2, 1, 0)
    assert data.shape[0] == 4 and np.isnan(data[2]).all() and np.array_equal(data[[0, 1, 3]], reference[PARTIAL])


def test_nifti_affine_matches_the_dicom_geometry_and_reads_back(tmp_path, cohort):
    dicom = export_results(cohort["catalog"], tmp_path, "need", 0.25, studies=[cohort["dicom"]])[0]
    (series,) = export_results(cohort["catalog"], tmp_path, "need", 0.25, studies=[cohort["dicom"]], fmt="nifti")
    assert series.path == tmp_path / cohort["dicom"] / "need_0.25.nii.gz" and series.files == [series.path]
    image = nib.load(series.path)
    assert int(image.header["qform_code"]) == int(image.header["sform_code"]) == 1
    assert np.allclose(image.get_qform(), image.affine) and np.allclose(image.get_sform(), image.affine)
    for k, path in enumerate(sorted(dicom.files)):  # voxel (i, j, k) = column i, row j of slice k
        plane = pydicom.dcmread(path)
        position = np.array([float(v) for v in plane.ImagePositionPatient])
        rows, columns = np.array([float(v) for v in plane.ImageOrientationPatient]).reshape(2, 3)
        dy, dx = (float(v) for v in plane.PixelSpacing)
        for i, j in ((0, 0), (63, 0), (5, 40)):
            lps = position + i * dx * rows + j * dy * columns
            assert np.allclose(image.affine @ [i, j, k, 1], [-lps[0], -lps[1], lps[2], 1], atol=1e-4)
    again = read_nifti(series.path)
    source = read_dicom_folder(cohort["source"])
    assert np.array_equal(again.hu, stored(cohort, cohort["dicom"], "need", 0.25))
    assert np.allclose(again.spacing_mm, source.spacing_mm) and np.allclose(again.z_mm, source.z_mm)


def test_user_errors_are_clear_and_write_nothing(tmp_path, cohort):
    catalog, key = cohort["catalog"], cohort["dicom"]
    cases = [
        (("need", 0.05), f"no `need` results at dose 0.05 yet in study {key}: run `need reconstruct"),
        (("foo", 0.25), "unknown method 'foo': a catalog holds need, spdiff_fbp, fbp_ld, fbp_nd, image_hu"),
        (("need", 0.3), f"study {key} holds no dose 0.3: its doses are 0.25, 0.1, 0.05"),
        (("need", None), "`need` is stored per dose: pass --dose, one of 0.25, 0.1, 0.05"),
        (("fbp_nd", 0.25), "has no dose: leave out --dose"),
    ]
    for (method, dose), message in cases:
        with pytest.raises(ExportError, match=message.replace("(", r"\(").replace(")", r"\)")):
            export_results(catalog, tmp_path, method, dose, studies=[key])
    with pytest.raises(ExportError, match="no studies"):
        export_results(catalog, tmp_path, "need", 0.25, studies=["study-0000000000000000"])
    with pytest.raises(ExportError, match="format must be"):
        export_results(catalog, tmp_path, "need", 0.25, fmt="png")
    with pytest.raises(ExportError, match="no catalog"):
        export_results(tmp_path / "missing.zarr", tmp_path, "need", 0.25)
    assert not any(tmp_path.iterdir())


def tree_digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_existing_output_is_refused_then_replaced_only_once_complete(tmp_path, cohort):
    catalog, key = cohort["catalog"], cohort["dicom"]
    (old,) = export_results(catalog, tmp_path, "need", 0.25, studies=[key])
    before = tree_digest(old.path)
    with pytest.raises(ExportError, match=f"{old.path} already exist"):
        export_results(catalog, tmp_path, "need", 0.25, studies=[key])
    assert tree_digest(old.path) == before
    (new,) = export_results(catalog, tmp_path, "need", 0.25, studies=[key], overwrite=True)
    assert new.path == old.path and new.series_uid != old.series_uid
    assert {pydicom.dcmread(p).SeriesInstanceUID for p in new.files} == {new.series_uid}
    assert sorted(p.name for p in (tmp_path / key).iterdir()) == ["need_0.25"]  # no staging or old copy left
    assert len(json.loads((tmp_path / MANIFEST).read_text())["series"]) == 1


def test_failed_or_killed_overwrite_leaves_the_old_series_intact(tmp_path, cohort):
    catalog = tmp_path / "cohort.zarr"
    shutil.copytree(cohort["catalog"], catalog)
    key, out = cohort["dicom"], tmp_path / "out"
    (old,) = export_results(catalog, out, "need", 0.25, studies=[key])
    before = tree_digest(old.path)

    damaged = open_catalog(catalog).study(key, "r+")  # a done slice whose data is lost (NaN)
    damaged.mark("reconstruct", [0, 1], "done", dose=0.05, produced_by=PRODUCED_BY)
    with pytest.raises(ExportError, match=r"slices \[0, 1\] of `need` are marked done but hold no data"):
        export_results(catalog, out, "need", 0.05, studies=[key])

    kill_after_two_files = (
        "import os, signal, sys\n"
        "import pydicom.dataset\n"
        "save, written = pydicom.dataset.Dataset.save_as, []\n"
        "def save_then_die(self, *args, **kwargs):\n"
        "    if len(written) == 2:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    written.append(save(self, *args, **kwargs))\n"
        "pydicom.dataset.Dataset.save_as = save_then_die\n"
        "from storage.export import export_results\n"
        "export_results(sys.argv[1], sys.argv[2], 'need', 0.25, overwrite=True)\n"
    )
    crash = subprocess.run(
        [sys.executable, "-c", kill_after_two_files, str(catalog), str(out)], cwd=Path(__file__).resolve().parent.parent
    )
    assert crash.returncode == -9
    assert tree_digest(old.path) == before
    leftovers = [p for p in (out / key).iterdir() if p.name != "need_0.25"]
    assert [p.name.startswith(".creating-") for p in leftovers] == [True]  # hidden, never taken for a series
    assert len(list(leftovers[0].iterdir())) == 2
    export_results(catalog, out, "need", 0.25, overwrite=True)  # the next export tidies the dead process's folder
    assert sorted(p.name for p in (out / key).iterdir()) == ["need_0.25"]


def test_cli_export_end_to_end(tmp_path, cohort, capsys):
    from flows.cli import main

    catalog, key = str(cohort["catalog"]), cohort["dicom"]
    args = ["export", catalog, str(tmp_path), "--method", "need", "--dose", "0.1", "--studies", key]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"{key}: 3 of 5 slices (partial" in out and "exported 1 series of `need`" in out
    assert main(args) == 1
    assert f"need export: error: {tmp_path / key / 'need_0.1'} already exist" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--format", "nifti"]) == 0
    assert (tmp_path / key / "need_0.1.nii.gz").is_file()
    assert main(["export", catalog, str(tmp_path), "--method", "need", "--dose", "0.3", "--split", "test"]) == 1
    assert "need export: error: study" in capsys.readouterr().err


@pytest.mark.slow
def test_export_after_the_real_ingest_and_reconstruct_flows(tmp_path, head_ct_path, dask_address):
    """DICOM in through `ingest`, two slices reconstructed with tiny models, exported: the series names the real
    checkpoint identities and passes dciodvfy."""
    from flows.ingest import run_ingest
    from flows.models import file_digest
    from flows.reconstruct import run_reconstruct
    from tasks.quick_models import write_tiny_models

    source = write_source_series(head_ct_path, tmp_path / "incoming" / "series")
    catalog = tmp_path / "cohort.zarr"
    run_ingest(sources=str(source), catalog=str(catalog), doses=[0.25], chunk_slices=5, dask_address=dask_address)
    (key,) = [row.study for row in open_catalog(catalog).rows()]
    spdiff_path, dgdiff_path = write_tiny_models(catalog, tmp_path)
    run_reconstruct(
        catalog=str(catalog),
        doses=[0.25],
        spdiff=spdiff_path,
        dgdiff=dgdiff_path,
        chunk_slices=2,
        device="cpu",
        slices=[0, 1],
        tracking=False,
        dask_address=dask_address,
    )
    (series,) = export_results(catalog, tmp_path / "out", "need", 0.25)
    assert (series.study, series.slices, series.total_slices) == (key, 2, N_SLICES)
    image = pydicom.dcmread(series.files[0])
    identities = (file_digest(Path(spdiff_path))[:8], file_digest(Path(dgdiff_path))[:8])
    assert image.SeriesDescription == "NEED 25% dose spdiff {} dgdiff {}".format(*identities)
    assert np.allclose([float(v) for v in image.ImagePositionPatient], ORIGIN_MM, atol=1e-4)
    for path in series.files:
        assert not [line for line in dciodvfy_messages(path) if line.startswith("Error")]


def test_rescale_keeps_every_value_within_half_a_step():
    for values, slope in (([-1024.0, 0.3, 1800.2], 1 / 16), ([-3024.0, 0.3, 3071.9], 1 / 8), ([15000.7, -2.0], 0.5)):
        hu = np.array(values)
        rescale = Rescale.fit(hu)
        assert rescale.slope == slope
        assert np.abs(rescale.encode(hu) * rescale.slope + rescale.intercept - hu).max() <= slope / 2
    with pytest.raises(ValueError, match="outside what int16"):
        Rescale(1 / 16).encode(np.array([4000.0]))


def test_nifti_overwrite_replaces_the_file(tmp_path, cohort):
    args = (cohort["catalog"], tmp_path, "fbp_ld", 0.25)
    (old,) = export_results(*args, studies=[cohort["plain"]], fmt="nifti")
    with pytest.raises(ExportError, match="already exist"):
        export_results(*args, studies=[cohort["plain"]], fmt="nifti")
    (new,) = export_results(*args, studies=[cohort["plain"]], fmt="nifti", overwrite=True)
    assert new.path == old.path and sorted(p.name for p in old.path.parent.iterdir()) == ["fbp_ld_0.25.nii.gz"]
    assert np.array_equal(read_nifti(new.path).hu, stored(cohort, cohort["plain"], "fbp_ld", 0.25))
