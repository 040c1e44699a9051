"""Decoding one DICOM slice's pixels to HU in any transfer syntax common in CT exports, with one clear error when
a slice cannot be decoded.

pydicom decodes uncompressed data (implicit or explicit VR, little or big endian, deflated) and RLE itself; JPEG
Lossless (Process 14 and SV1), JPEG Baseline/Extended and JPEG-LS with pylibjpeg-libjpeg; JPEG 2000 and HTJ2K with
pylibjpeg-openjpeg (Pillow is a fallback for 8-bit JPEG and JPEG 2000). Compressed frames are checked for their end
marker first, since libjpeg fills the missing rows of a truncated codestream with zeros without an error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels import get_decoder
from pydicom.uid import (
    UID,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
    RLELossless,
)

from storage.readers.base import ReaderError

# The PyPI packages (pinned in pyproject.toml) that give pydicom a decoder for each compressed transfer syntax.
DECODER_PACKAGES: dict[str, str] = {
    **dict.fromkeys((*JPEGTransferSyntaxes, *JPEGLSTransferSyntaxes), "pylibjpeg and pylibjpeg-libjpeg"),
    **dict.fromkeys(JPEG2000TransferSyntaxes, "pylibjpeg and pylibjpeg-openjpeg"),
    RLELossless: "pylibjpeg and pylibjpeg-rle",
}
# Codestreams that end with an end-of-image (JPEG, JPEG-LS) or end-of-codestream (JPEG 2000) marker, FFD9.
MARKER_TERMINATED = frozenset((*JPEGTransferSyntaxes, *JPEGLSTransferSyntaxes, *JPEG2000TransferSyntaxes))
END_MARKER, FRAME_PADDING = b"\xff\xd9", b"\x00\xff"
ALL_PLUGINS_FAILED = "Unable to decode as exceptions were raised by all available plugins"
# dcmtk decoders that accept some codestreams libjpeg refuses (e.g. bad SOS parameters in old 12-bit JPEG).
DCMTK_DECODERS = {
    **dict.fromkeys(JPEGTransferSyntaxes, "dcmdjpeg"),
    **dict.fromkeys(JPEGLSTransferSyntaxes, "dcmdjpls"),
}


def slice_hu(image: Dataset) -> np.ndarray:
    """The pixels of one single-frame grayscale slice, decoded from its transfer syntax, as HU:
    stored value · RescaleSlope + RescaleIntercept (float32, shape (Rows, Columns)).

    Any slice that cannot be decoded raises one ReaderError naming its file and transfer syntax (see
    _undecodable), never pydicom's multi-line plugin report.
    """
    name = Path(str(image.filename)).name if getattr(image, "filename", None) else "a slice"
    syntax = _transfer_syntax(image)
    _check_codestream_complete(image, name, syntax)
    try:
        pixels = image.pixel_array
    except Exception as err:  # decoders raise many types on truncated or undecodable data
        raise ReaderError(_undecodable(name, syntax, err)) from None
    shape = (int(image.Rows), int(image.Columns))
    if pixels.shape != shape:
        raise ReaderError(f"{name}: decoded pixels have shape {pixels.shape}, expected a grayscale {shape} slice")
    slope = float(image.get("RescaleSlope", 1.0))
    intercept = float(image.get("RescaleIntercept", 0.0))
    if not (np.isfinite(slope) and np.isfinite(intercept) and slope != 0):
        raise ReaderError(f"{name}: RescaleSlope {slope} / RescaleIntercept {intercept} must be finite, slope non-zero")
    return (pixels.astype(np.float64) * slope + intercept).astype(np.float32)


def _check_codestream_complete(image: Dataset, name: str, syntax: UID | None) -> None:
    """Refuse a JPEG, JPEG-LS or JPEG 2000 frame that does not end with its end marker (FFD9, then padding):
    libjpeg decodes such a truncated codestream without error, leaving the missing rows zero."""
    if syntax not in MARKER_TERMINATED:
        return
    try:
        frame = next(generate_frames(image.PixelData, number_of_frames=1))
    except Exception as err:  # a damaged item structure raises several types
        raise ReaderError(
            f"{name}: {_syntax_label(syntax)} pixel data is not valid encapsulated data (truncated?): "
            f"{type(err).__name__}"
        ) from None
    if not frame.rstrip(FRAME_PADDING).endswith(END_MARKER):
        raise ReaderError(
            f"{name}: {_syntax_label(syntax)} pixel data is truncated or corrupt: the compressed frame does not end"
            " with the end-of-image marker"
        )


def _undecodable(name: str, syntax: UID | None, err: Exception) -> str:
    """One line saying why a slice's pixels cannot be decoded and what would help."""
    what = f"{name}: {_syntax_label(syntax)} pixel data cannot be decoded"
    if syntax is None:
        return f"{what}: the file has no TransferSyntaxUID"
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        return (
            f"{what}: pydicom {pydicom.__version__} has no decoder for this transfer syntax; export the series"
            " uncompressed or in a lossless syntax (JPEG Lossless, JPEG-LS, JPEG 2000, RLE)"
        )
    if not decoder.is_available:
        package = DECODER_PACKAGES.get(syntax, "a pydicom pixel-data decoder plugin")
        return f"{what}: no decoder plugin is installed; install {package} (pinned in pyproject.toml)"
    reasons = _decoder_reasons(err)
    message = f"{what} (corrupt, truncated, or an encoding the installed decoders refuse): {reasons}"
    if syntax in DCMTK_DECODERS:
        message += f"; dcmtk's `{DCMTK_DECODERS[syntax]} IN OUT` may still decode it to an uncompressed file"
    return message


def _decoder_reasons(err: Exception) -> str:
    """pydicom's error in one line: its per-plugin reasons ("pylibjpeg: ...; pillow: ...") joined by "; "."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if lines and lines[0].startswith(ALL_PLUGINS_FAILED):
        lines = lines[1:]
    return "; ".join(lines) or type(err).__name__


def _transfer_syntax(image: Dataset) -> UID | None:
    meta = getattr(image, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    return UID(str(uid)) if uid is not None else None


def _syntax_label(syntax: UID | None) -> str:
    """A transfer syntax for messages: its name and UID, e.g. "RLE Lossless (1.2.840.10008.1.2.5)"."""
    if syntax is None:
        return "unknown transfer syntax"
    return f"{syntax.name} ({syntax})" if syntax.name != str(syntax) else f"transfer syntax {syntax}"


def transfer_syntax_name(image: Dataset) -> str:
    """The name of a slice's transfer syntax, e.g. "JPEG Lossless, Non-Hierarchical, First-Order Prediction"."""
    syntax = _transfer_syntax(image)
    return syntax.name if syntax is not None else "unknown"
