"""Volume readers other than DICOM (the bundled InVesalius head CT, NIfTI, .npy), read_volume dispatch, Volume, deid."""

from __future__ import annotations

import gzip
import io
import plistlib
import tarfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from storage.deid import DEFAULT_SALT, subject_key
from storage.readers import BUNDLED_HEAD_CT, ReaderError, read_volume
from storage.volume import Volume


def write_inv3(
    path: Path, matrix: np.ndarray, modality: str = "CT", name: str = "Doe^Jane", truncate_matrix: int = 0
) -> Path:
    """A minimal .inv3 project (gzipped tar of main.plist + matrix.dat) like InVesalius writes."""
    meta = {
        "name": name,
        "modality": modality,
        "spacing": [0.8, 0.7, 2.0],
        "matrix": {"dtype": str(matrix.dtype), "shape": list(matrix.shape), "filename": "matrix.dat"},
    }
    raw = matrix.astype(matrix.dtype.newbyteorder("<")).tobytes()
    members = {"tmpabc/main.plist": plistlib.dumps(meta), "tmpabc/matrix.dat": raw[: len(raw) - truncate_matrix]}
    with tarfile.open(path, "w:gz") as archive:
        for member_name, payload in members.items():
            info = tarfile.TarInfo(member_name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    return path


def test_bundled_head_ct(head_ct_path):
    assert head_ct_path == BUNDLED_HEAD_CT
    volume = read_volume(head_ct_path)
    assert volume.hu.shape == (108, 256, 256) and volume.hu.dtype == np.float32
    assert volume.spacing_mm == pytest.approx((1.5, 0.957, 0.957), abs=1e-3)
    assert volume.z_mm[:3] == pytest.approx([0.0, 1.5, 3.0])
    assert -1030 <= volume.hu.min() <= -1000, "air"
    assert volume.hu.max() > 1000, "bone"
    assert volume.source["format"] == "inv3" and volume.source["modality"] == "CT"
    assert "ProMED" not in repr(volume) and "0051" not in repr(volume.source)
    assert volume.subject_key == subject_key("ProMED CT 0051")


def test_inv3_round_trip_and_bad_projects(tmp_path):
    matrix = np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5) - 1000
    volume = read_volume(write_inv3(tmp_path / "ok.inv3", matrix))
    np.testing.assert_array_equal(volume.hu, matrix)
    assert volume.spacing_mm == pytest.approx((2.0, 0.7, 0.8))
    assert "Doe" not in repr(volume)

    with pytest.raises(ReaderError, match="modality is 'MR'"):
        read_volume(write_inv3(tmp_path / "mr.inv3", matrix, modality="MR"))
    with pytest.raises(ReaderError, match="truncated"):
        read_volume(write_inv3(tmp_path / "short.inv3", matrix, truncate_matrix=10))
    cut = tmp_path / "cut.inv3"
    cut.write_bytes((tmp_path / "ok.inv3").read_bytes()[:60])
    with pytest.raises(ReaderError, match="corrupt or truncated"):
        read_volume(cut)
    plain = tmp_path / "plain.inv3"
    plain.write_bytes(gzip.compress(b"not a tar at all" * 40))
    with pytest.raises(ReaderError, match="plain.inv3"):
        read_volume(plain)


def test_nifti_reoriented_slices_first(tmp_path):
    rng = np.random.default_rng(1)
    ras = rng.normal(size=(5, 4, 3)).astype(np.float32) * 100  # (x: R, y: A, z: S)
    ras_affine = np.diag([0.8, 0.7, 2.0, 1.0])
    ras_affine[:3, 3] = [-10.0, 5.0, 30.0]
    nib.save(nib.Nifti1Image(ras, ras_affine), tmp_path / "ras.nii.gz")
    lps_affine = ras_affine.copy()
    lps_affine[0, 0], lps_affine[1, 1] = -0.8, -0.7
    lps_affine[:3, 3] = [-10.0 + 0.8 * 4, 5.0 + 0.7 * 3, 30.0]
    nib.save(nib.Nifti1Image(ras[::-1, ::-1, :].copy(), lps_affine), tmp_path / "lps.nii")

    from_ras, from_lps = read_volume(tmp_path / "ras.nii.gz"), read_volume(tmp_path / "lps.nii")
    assert from_ras.hu.shape == (3, 4, 5)
    np.testing.assert_allclose(from_ras.hu, ras.transpose(2, 1, 0)[:, ::-1, ::-1], rtol=1e-6)
    np.testing.assert_allclose(from_lps.hu, from_ras.hu, rtol=1e-6)
    assert from_ras.spacing_mm == pytest.approx((2.0, 0.7, 0.8))
    assert from_ras.z_mm == pytest.approx([30.0, 32.0, 34.0])


def test_nifti_applies_scl_slope_and_refuses_nan(tmp_path):
    stored = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    image = nib.Nifti1Image(stored, np.eye(4))
    image.header.set_slope_inter(2.0, -1024.0)
    nib.save(image, tmp_path / "scaled.nii")
    volume = read_volume(tmp_path / "scaled.nii")
    assert volume.hu.min() == -1024.0 and volume.hu.max() == 23 * 2.0 - 1024.0

    bad = np.zeros((2, 3, 4), np.float32)
    bad[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(bad, np.eye(4)), tmp_path / "nan.nii")
    with pytest.raises(ReaderError, match="non-finite"):
        read_volume(tmp_path / "nan.nii")
    (tmp_path / "junk.nii").write_bytes(b"\x00" * 100)
    with pytest.raises(ReaderError, match="junk.nii"):
        read_volume(tmp_path / "junk.nii")


def test_npy_needs_spacing_and_clean_data(tmp_path):
    values = np.linspace(-1000, 1000, 2 * 3 * 4).reshape(2, 3, 4)
    np.save(tmp_path / "ct.npy", values)
    with pytest.raises(ReaderError, match="spacing_mm"):
        read_volume(tmp_path / "ct.npy")
    volume = read_volume(tmp_path / "ct.npy", spacing_mm=(1.25, 0.5, 0.5))
    np.testing.assert_array_equal(volume.hu, values.astype(np.float32))
    assert volume.z_mm == pytest.approx([0.0, 1.25])
    with pytest.raises(ReaderError, match="spacing_mm"):
        read_volume(tmp_path / "ct.npy", spacing_mm=(1.0, -0.5, 0.5))
    values[0, 0, 0] = np.inf
    np.save(tmp_path / "inf.npy", values)
    with pytest.raises(ReaderError, match="non-finite"):
        read_volume(tmp_path / "inf.npy", spacing_mm=(1, 1, 1))
    np.save(tmp_path / "flat.npy", np.zeros((3, 4)))
    with pytest.raises(ReaderError, match="3-D"):
        read_volume(tmp_path / "flat.npy", spacing_mm=(1, 1, 1))


def test_read_volume_dispatch_errors_and_spacing_override(tmp_path):
    with pytest.raises(ReaderError, match="does not exist"):
        read_volume(tmp_path / "missing.nii")
    (tmp_path / "scan.mha").write_text("?")
    with pytest.raises(ReaderError, match="unknown volume format"):
        read_volume(tmp_path / "scan.mha")
    matrix = np.zeros((3, 2, 2), np.int16)
    volume = read_volume(write_inv3(tmp_path / "ok.inv3", matrix), spacing_mm=(3.0, 0.7, 0.8))
    assert volume.spacing_mm == (3.0, 0.7, 0.8)
    assert volume.z_mm == pytest.approx([0.0, 3.0, 6.0])
    assert volume.source["spacing_overridden"] is True


def test_volume_checks_its_fields():
    hu = np.zeros((2, 3, 3))
    assert Volume(hu, (1, 1, 1), [0.0, 1.0], "subj-x").hu.dtype == np.float32
    with pytest.raises(ValueError, match="strictly increasing"):
        Volume(hu, (1, 1, 1), [1.0, 0.0], "subj-x")
    with pytest.raises(ValueError, match="shape"):
        Volume(hu, (1, 1, 1), [0.0], "subj-x")
    with pytest.raises(ValueError, match="subject_key"):
        Volume(hu, (1, 1, 1), [0.0, 1.0], "")
    with pytest.raises(ValueError, match="JSON"):
        Volume(hu, (1, 1, 1), [0.0, 1.0], "subj-x", source={"when": object()})


def test_subject_key_is_salted_and_stable(monkeypatch):
    monkeypatch.delenv("NEED_DEID_SALT", raising=False)
    key = subject_key("PHI-12345", "1.2.3")
    assert key == subject_key("PHI-12345", "1.2.3", salt=DEFAULT_SALT)
    assert key.startswith("subj-") and "PHI" not in key and "12345" not in key
    assert key != subject_key("PHI-12345", "1.2.4")
    assert key != subject_key("PHI-12345", "1.2.3", salt="other")
    with pytest.raises(ValueError, match="identifier"):
        subject_key("", "")
