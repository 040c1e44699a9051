"""The calibration figure: validation PSNR against dose for the stages, the reference and the calibrated settings,
and the s2 curve at each dose with the other chosen settings."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (the backend is chosen first)

CURVES = (
    ("fbp_ld", "LDCT FBP"),
    ("spdiff_fbp_chain", "SPDiff→FBP, full chain"),
    ("spdiff_fbp_one_shot", "SPDiff→FBP, one-shot x̂0"),
    ("reference", "NEED, reference settings"),
    ("calibrated", "NEED, calibrated"),
)


def calibration_plot(doses: Sequence[Mapping[str, Any]], path: str | Path, title: str) -> Path:
    """`doses`: one entry per dose with `dose`, the CURVES' PSNRs under `scores` and `s2_curve` [{s2, psnr}]."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    ordered = sorted(doses, key=lambda entry: entry["dose"])
    xs = [entry["dose"] for entry in ordered]
    for key, label in CURVES:
        left.plot(xs, [entry["scores"][key] for entry in ordered], marker="o", label=label)
    left.set(xscale="log", xlabel="dose fraction", ylabel="validation PSNR (dB)", title="by dose")
    left.set_xticks(xs, [f"{x:g}" for x in xs])
    left.set_xticks([], minor=True)  # the log axis' own minor labels would overprint the doses
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    for entry in ordered:
        curve = entry["s2_curve"]
        right.plot([p["s2"] for p in curve], [p["psnr"] for p in curve], marker=".", label=f"dose {entry['dose']:g}")
    right.set(xlabel="s2 (initial-reconstruction guidance)", ylabel="validation PSNR (dB)", title="s2, others chosen")
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    figure.suptitle(textwrap.fill(title, 150), fontsize=9)
    figure.tight_layout()
    target = Path(path)
    figure.savefig(target, dpi=110)
    plt.close(figure)
    return target
