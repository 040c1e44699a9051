"""Every transfer syntax common in CT exports decodes through the DICOM reader, on real files only: pydicom's bundled
test files (against their uncompressed originals, or against dcmtk's independent decoders), and a real head-CT
series transcoded by dcmtk (JPEG, JPEG-LS, RLE, deflated, big endian, implicit VR) and by pydicom's JPEG 2000
encoder (pylibjpeg-openjpeg; dcmtk writes no JPEG 2000), read by folder and through discovery. Undecodable slices
give one clear ReaderError."""

from __future__ import annotations

import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, generate_frames
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.pixels import get_decoder, pixel_array
from pydicom.pixels.decoders.base import _PIXEL_DATA_DECODERS
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from storage.examples import ct_template, write_ct_series
from storage.readers import ReaderError, read_volume
from storage.readers.dicom import read_dicom_folder
from storage.readers.dicom_pixels import DECODER_PACKAGES, slice_hu
from storage.readers.series import discover_series, read_series
from tests.system_tools import require_tool

HEAD_SLICES = slice(50, 53)  # three real head-CT slices at full 256 x 256
JPEG_XL_LOSSLESS = "1.2.840.10008.1.2.4.110"  # DICOM 2024; pydicom 3.0.2 has no decoder for it


def bundled_path(name: str) -> str:
    path = get_testdata_file(name)
    assert isinstance(path, str), f"pydicom's test file {name} is missing"
    return path


def bundled(name: str) -> pydicom.Dataset:
    return pydicom.dcmread(bundled_path(name))


# --- pydicom's bundled files ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, syntax",
    [
        ("MR_small_RLE.dcm", RLELossless),
        ("MR_small_jpeg_ls_lossless.dcm", JPEGLSLossless),
        ("MR_small_jp2klossless.dcm", JPEG2000Lossless),
        ("MR_small_bigendian.dcm", ExplicitVRBigEndian),
        ("MR_small_implicit.dcm", ImplicitVRLittleEndian),
    ],
)
def test_bundled_lossless_variants_match_the_uncompressed_original(name, syntax):
    image = bundled(name)
    assert image.file_meta.TransferSyntaxUID == syntax
    reference = slice_hu(bundled("MR_small.dcm"))
    np.testing.assert_array_equal(slice_hu(image), reference)


@pytest.mark.parametrize(
    "name, syntax, tool, max_diff",
    [
        # independent decoders: dcmtk's IJG JPEG and CharLS against pydicom's libjpeg (IDCT rounding: 1 level)
        ("JPGExtended.dcm", JPEGExtended12Bit, ("dcmdjpeg",), 1),
        ("JPEGLSNearLossless_16.dcm", JPEGLSNearLossless, ("dcmdjpls",), 0),
        ("image_dfl.dcm", DeflatedExplicitVRLittleEndian, ("dcmconv", "+te"), 0),
    ],
)
def test_bundled_files_match_dcmtk_decoding(tmp_path, name, syntax, tool, max_diff):
    require_tool(tool[0], "dcmtk")
    image = bundled(name)
    assert image.file_meta.TransferSyntaxUID == syntax
    decoded = tmp_path / "decoded.dcm"
    subprocess.run([tool[0], bundled_path(name), str(decoded), *tool[1:]], check=True, capture_output=True)
    reference = pydicom.dcmread(decoded)
    assert reference.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.abs(slice_hu(image) - slice_hu(reference)).max() <= max_diff


def test_bundled_lossy_jpeg2000_decodes_the_same_with_both_plugins():
    image = bundled("JPEG2000.dcm")
    assert image.file_meta.TransferSyntaxUID == JPEG2000
    hu = slice_hu(image)
    assert hu.shape == (1024, 256) and hu.std() > 10
    np.testing.assert_array_equal(hu, pixel_array(image, decoding_plugin="pillow"))  # both wrap OpenJPEG


def test_bundled_ct_decodes_with_rescale():
    image = bundled("CT_small.dcm")
    expected = image.pixel_array * float(image.RescaleSlope) + float(image.RescaleIntercept)
    np.testing.assert_array_equal(slice_hu(image), expected.astype(np.float32))


def test_old_12_bit_extended_jpeg_gives_one_clear_error_and_dcmtk_reads_it(tmp_path):
    """JPEG-lossy.dcm has invalid SOS parameters: libjpeg refuses it, Pillow and (through pydicom) GDCM do not do
    12-bit JPEG, dcmtk's dcmdjpeg tolerates it."""
    with pytest.raises(ReaderError) as caught:
        slice_hu(bundled("JPEG-lossy.dcm"))
    message = str(caught.value)
    assert message.startswith("JPEG-lossy.dcm: JPEG Extended (Process 2 and 4) (1.2.840.10008.1.2.4.51)")
    assert "scan start must be zero" in message and "dcmdjpeg" in message
    assert "\n" not in message and "all available plugins" not in message
    require_tool("dcmdjpeg", "dcmtk")
    decoded = tmp_path / "decoded.dcm"
    subprocess.run(["dcmdjpeg", bundled_path("JPEG-lossy.dcm"), str(decoded)], check=True, capture_output=True)
    assert slice_hu(pydicom.dcmread(decoded)).shape == (1024, 256)


def test_every_compressed_syntax_with_a_decoder_has_an_install_hint():
    with_decoders = {uid for uid in _PIXEL_DATA_DECODERS if get_decoder(uid).is_available}
    compressed = {uid for uid in with_decoders if UID(uid).is_compressed and uid != DeflatedExplicitVRLittleEndian}
    assert compressed <= set(DECODER_PACKAGES)
    assert DECODER_PACKAGES[JPEGLosslessSV1] == "pylibjpeg and pylibjpeg-libjpeg"
    assert DECODER_PACKAGES[JPEG2000] == "pylibjpeg and pylibjpeg-openjpeg"


# --- a real CT series in every syntax ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Transcode:
    """A transfer syntax and how to write it: a dcmtk command (`tool` IN OUT `options`) or pydicom's compress()
    with `encoder` options; `max_hu` / `mean_hu` bound the HU error (0 for lossless)."""

    syntax: UID
    tool: str | None = None
    options: tuple[str, ...] = ()
    encoder: dict[str, Any] = field(default_factory=dict)
    max_hu: float = 0.0
    mean_hu: float = 0.0

    def write(self, source: Path, target: Path) -> Path:
        target.mkdir()
        for path in sorted(source.iterdir()):
            if self.tool is None:
                image = pydicom.dcmread(path)
                image.compress(self.syntax, **self.encoder)
                image.save_as(target / path.name, enforce_file_format=True)
            else:
                command = [require_tool(self.tool, "dcmtk"), *self.options, str(path), str(target / path.name)]
                subprocess.run(command, check=True, capture_output=True)
        return target


LOSSLESS = {
    "jpeg-p14-sv1": Transcode(JPEGLosslessSV1, "dcmcjpeg"),  # dcmcjpeg's default: +e1
    "jpeg-p14-sv6": Transcode(JPEGLossless, "dcmcjpeg", ("+el",)),  # selection value 6 by default
    "jpeg-p14-sv7": Transcode(JPEGLossless, "dcmcjpeg", ("+el", "+sv", "7")),
    "jpeg-ls": Transcode(JPEGLSLossless, "dcmcjpls"),
    "rle": Transcode(RLELossless, "dcmcrle"),
    "deflated": Transcode(DeflatedExplicitVRLittleEndian, "dcmconv", ("+td",)),
    "big-endian": Transcode(ExplicitVRBigEndian, "dcmconv", ("+tb",)),
    "implicit": Transcode(ImplicitVRLittleEndian, "dcmconv", ("+ti",)),
    "jpeg2000": Transcode(JPEG2000Lossless),
}
# Bounds measured on these slices (max / mean |dHU|): extended 17 / 2.2, baseline 160 / 12.9 (8 bits with
# RescaleSlope 16), JPEG 2000 at 10:1 39 / 4.6; JPEG-LS near-lossless is bounded by NEAR by the standard.
LOSSY = {
    "jpeg-extended": Transcode(JPEGExtended12Bit, "dcmcjpeg", ("+ee",), max_hu=40, mean_hu=4),
    "jpeg-baseline": Transcode(JPEGBaseline8Bit, "dcmcjpeg", ("+eb",), max_hu=250, mean_hu=20),
    "jpeg-ls-near-2": Transcode(JPEGLSNearLossless, "dcmcjpls", ("+en", "+md", "2"), max_hu=2, mean_hu=2),
    "jpeg2000-10to1": Transcode(JPEG2000, encoder={"j2k_cr": [10]}, max_hu=80, mean_hu=8),
}


def unsigned_12_bit() -> pydicom.Dataset:
    """The pixel format of many scanners: 12 of 16 bits, unsigned (HU + 1024); JPEG-LS near-lossless needs it."""
    template = ct_template()
    template.PixelRepresentation, template.BitsStored, template.HighBit = 0, 12, 11
    return template


@pytest.fixture(scope="module")
def head_series(tmp_path_factory, head_ct_path) -> dict[str, tuple[Path, np.ndarray]]:
    """Three head-CT slices written uncompressed as 16-bit signed (write_ct_series' default) and as 12-bit
    unsigned series: pixel format -> (folder, HU as read from the uncompressed files)."""
    volume = read_volume(head_ct_path)
    root = tmp_path_factory.mktemp("head")
    series = {}
    for pixels, template in (("int16", None), ("uint12", unsigned_12_bit())):
        folder = write_ct_series(
            root / pixels,
            volume.hu[HEAD_SLICES],
            volume.spacing_mm,
            patient_id="P",
            patient_name="N",
            template=template,
        )
        series[pixels] = (folder, read_dicom_folder(folder).hu)
    return series


CASES = [(name, pixels, case) for name, case in LOSSLESS.items() for pixels in ("int16", "uint12")]
CASES += [(name, "uint12", case) for name, case in LOSSY.items()]


@pytest.mark.parametrize("name, pixels, case", CASES, ids=[f"{name}-{pixels}" for name, pixels, _ in CASES])
def test_head_ct_series_reads_in_every_syntax(tmp_path, head_series, name, pixels, case):
    plain, reference = head_series[pixels]
    folder = case.write(plain, tmp_path / name)
    files = sorted(folder.iterdir())
    assert len(files) == 3
    assert {pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID for path in files} == {
        case.syntax
    }
    volume = read_dicom_folder(folder)
    found = discover_series([folder])
    assert len(found.series) == 1 and not found.skipped and not found.unreadable
    discovered = read_series(found.series[0])
    for read in (volume, discovered):
        assert read.source["transfer_syntaxes"] == [case.syntax.name]
        error = np.abs(read.hu - reference)
        if case.max_hu == 0:
            np.testing.assert_array_equal(read.hu, reference)
        else:
            assert error.max() <= case.max_hu and error.mean() <= case.mean_hu, (error.max(), error.mean())
            assert error.max() > 0  # really lossy: the files are not silently uncompressed


# --- undecodable slices -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def jpeg_lossless_series(tmp_path_factory, head_series) -> Path:
    plain, _ = head_series["int16"]
    return LOSSLESS["jpeg-p14-sv1"].write(plain, tmp_path_factory.mktemp("sv1") / "series")


def copy_series(source: Path, target: Path) -> tuple[Path, Path]:
    """A copy of `source` in `target`, and the copy's middle file (the one a test damages)."""
    target.mkdir()
    for path in source.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    return target, sorted(target.iterdir())[1]


def relabel(path: Path, syntax: str) -> None:
    """Rewrite the file meta of `path` with another TransferSyntaxUID, keeping the data set bytes (pydicom refuses
    to write a syntax it does not know, such as JPEG XL)."""
    raw = path.read_bytes()
    (group_length,) = struct.unpack("<I", raw[140:144])  # (0002,0000) UL right after the preamble and "DICM"
    meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
    meta.TransferSyntaxUID = UID(syntax)
    header = DicomBytesIO()
    header.is_little_endian, header.is_implicit_VR = True, False
    write_file_meta_info(header, meta)
    path.write_bytes(raw[:132] + header.getvalue() + raw[144 + group_length :])


def test_a_syntax_without_decoder_gives_one_clear_error(tmp_path, jpeg_lossless_series):
    folder, damaged = copy_series(jpeg_lossless_series, tmp_path / "jpeg-xl")
    relabel(damaged, JPEG_XL_LOSSLESS)
    with pytest.raises(ReaderError) as caught:
        read_dicom_folder(folder)
    assert str(caught.value) == (
        f"{damaged.name}: transfer syntax {JPEG_XL_LOSSLESS} pixel data cannot be decoded: pydicom "
        f"{pydicom.__version__} has no decoder for this transfer syntax; export the series uncompressed or in a "
        "lossless syntax (JPEG Lossless, JPEG-LS, JPEG 2000, RLE)"
    )


def rewrite_frame(path: Path, damage: Callable[[bytes], bytes]) -> None:
    """Replace the single compressed frame of `path` by `damage(frame)`."""
    image = pydicom.dcmread(path)
    frame = next(generate_frames(image.PixelData, number_of_frames=1))
    image.PixelData = encapsulate([damage(frame)])
    image.save_as(path)


@pytest.mark.parametrize("case", ["jpeg-p14-sv1", "jpeg-ls", "jpeg2000"])
def test_a_truncated_codestream_is_refused(tmp_path, head_series, case):
    """libjpeg decodes half a JPEG Lossless or JPEG-LS frame without error, leaving rows zero: the reader refuses it."""
    plain, _ = head_series["int16"]
    folder, damaged = copy_series(LOSSLESS[case].write(plain, tmp_path / "full"), tmp_path / "cut")
    rewrite_frame(damaged, lambda frame: frame[: len(frame) // 2])
    with pytest.raises(
        ReaderError,
        match=rf"^{damaged.name}: .*\(1\.2\.840\.10008\.1\.2\.4\.\d+\) pixel data is "
        "truncated or corrupt: the compressed frame does not end with the end-of-image marker$",
    ):
        read_dicom_folder(folder)
    found = discover_series([folder])
    with pytest.raises(ReaderError, match=f"{damaged.name}: .* truncated"):
        read_series(found.series[0])


def test_a_corrupt_codestream_gives_the_decoders_reasons_on_one_line(tmp_path, head_series):
    plain, _ = head_series["int16"]
    folder, damaged = copy_series(LOSSLESS["jpeg2000"].write(plain, tmp_path / "full"), tmp_path / "corrupt")
    rewrite_frame(damaged, lambda frame: frame[:40] + b"\xff\xd9")  # header cut, end marker kept
    with pytest.raises(ReaderError) as caught:
        read_dicom_folder(folder)
    message = str(caught.value)
    assert message.startswith(
        f"{damaged.name}: JPEG 2000 Image Compression (Lossless Only) (1.2.840.10008.1.2.4.90) pixel data cannot be "
        "decoded (corrupt, truncated, or an encoding the installed decoders refuse): pylibjpeg: "
    )
    assert "; pillow: " in message and "\n" not in message and "all available plugins" not in message
