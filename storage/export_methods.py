"""What `need export` can export and how each exported series describes itself: the catalog's image variables
(storage.schema), which ledger says a slice of each is done, and the DICOM descriptions naming method, dose and
models.

Reconstruction ledgers record `produced_by` = `spdiff:<identity>/dgdiff:<identity>/<digest>` (tasks.reconstruct's
result_key), where an identity is the first 16 hex digits of the checkpoint file's sha256 (flows.models.file_digest)
— registered model versions live in MLflow, not in the catalog. Descriptions show the first 8 digits of each.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from storage.schema import DATA_VARIABLES

MODEL_IDENTITY = re.compile(r"(spdiff|dgdiff):([0-9a-f]{8,64})")
SHORT_IDENTITY = 8
MAX_DERIVATION_CHARS = 1024


@dataclass(frozen=True)
class ExportMethod:
    """One exportable image variable."""

    name: str
    label: str  # short, for SeriesDescription
    what: str  # a phrase for DerivationDescription
    ledger: str | None  # the ledger whose done slices hold data; None: every slice (written at creation)
    models: tuple[str, ...]  # the model kinds named in its description
    series_base: int  # SeriesNumber = base (+ the dose in percent for per-dose methods)
    kernel: str = "RAM-LAK"  # ConvolutionKernel: the FBP filter; "" for none

    @property
    def per_dose(self) -> bool:
        """Whether the variable has a dose dimension (a low-dose result)."""
        return "dose" in DATA_VARIABLES[self.name].dims


METHODS = {
    method.name: method
    for method in (
        ExportMethod(
            "need",
            "NEED",
            "NEED reconstruction (SPDiff projection denoising, FBP, DGDiff image refinement)",
            "reconstruct",
            ("spdiff", "dgdiff"),
            100,
        ),
        ExportMethod(
            "spdiff_fbp",
            "SPDiff+FBP",
            "FBP of the SPDiff-denoised low-dose projections (NEED's first stage)",
            "reconstruct",
            ("spdiff",),
            200,
        ),
        ExportMethod("fbp_ld", "LD FBP", "FBP of the low-dose projections", "reconstruct", (), 300),
        ExportMethod("fbp_nd", "ND FBP", "FBP of the normal-dose projections (the reference)", "ingest", (), 400),
        ExportMethod("image_hu", "Source", "the source image as ingested", None, (), 500, kernel=""),
    )
}
assert set(METHODS) == {name for name, spec in DATA_VARIABLES.items() if spec.dims[-2:] == ("y", "x")}


def model_identities(produced_by: Iterable[str], kinds: Iterable[str]) -> dict[str, list[str]]:
    """Model kind -> the distinct checkpoint identities named in the ledger strings `produced_by` (sorted)."""
    found: dict[str, set[str]] = {kind: set() for kind in kinds}
    for text in produced_by:
        for kind, identity in MODEL_IDENTITY.findall(text):
            if kind in found:
                found[kind].add(identity)
    return {kind: sorted(identities) for kind, identities in found.items()}


def series_number(method: ExportMethod, dose: float | None) -> int:
    """SeriesNumber: 100s by method (need 1xx, spdiff_fbp 2xx, fbp_ld 3xx, fbp_nd 400, image_hu 500), plus the
    dose in percent."""
    return method.series_base + (round(dose * 100) % 100 if dose is not None else 0)


def series_description(method: ExportMethod, dose: float | None, producers: Iterable[str]) -> str:
    """SeriesDescription (at most 64 characters): e.g. `NEED 25% dose spdiff 1a2b3c4d dgdiff 5e6f7a8b`."""
    parts = [method.label]
    if dose is not None:
        parts.append(f"{dose * 100:g}% dose")
    for kind, identities in model_identities(producers, method.models).items():
        parts.append(f"{kind} {identities[0][:SHORT_IDENTITY]}" if len(identities) == 1 else f"{kind} mixed")
    return " ".join(parts)[:64]


def derivation_description(method: ExportMethod, dose: float | None, physics: dict, producers: Iterable[str]) -> str:
    """DerivationDescription: that this is a NEED low-dose reconstruction, of what, at which dose, by what."""
    distinct = sorted({text for text in producers if text})
    if dose is None:
        text = f"NEED low-dose CT pipeline export: {method.what}."
    else:
        incident = physics.get("incident_count")
        photons = f", {float(incident) * dose:g} incident photons per ray" if incident else ""
        text = (
            f"NEED low-dose CT reconstruction: {method.what}, from projections simulated at {dose:g} of the "
            f"normal dose{photons}."
        )
    if distinct:
        text += f" Produced by: {'; '.join(distinct)}."
    text += " Research output, not an original acquisition."
    return text[:MAX_DERIVATION_CHARS]
