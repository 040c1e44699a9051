"""Classical denoisers of the low-dose FBP: the baselines a user would pick instead of NEED. Non-local means and total
variation (scikit-image), and BM3D when the optional `bm3d` package is installed (the `bench` extra only: its licence
is non-commercial, so it is never a runtime dependency).

Each denoises slice by slice in HU/1000 with one dimensionless strength relative to the slice's own noise level
(`noise_sigma`), so the one value chosen on validation slices (bench/classical.py) serves every dose.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import ModuleType

import numpy as np
from skimage.restoration import denoise_nl_means, denoise_tv_chambolle

HU_SCALE = 1000.0
"""Denoisers work on HU / HU_SCALE in float64: values of order 1, every HU of detail kept."""
NLM_PATCH_SIZE = 5
"""5 × 5 patches (4.8 mm at the head CT's 0.96 mm pixels): small enough for fine anatomy at 256²."""
NLM_PATCH_DISTANCE = 6
"""A 13 × 13 search window: scikit-image's defaults (7 × 7 patches, 23 × 23 window) were 3× slower and no better on
validation slices."""

# The strengths below were chosen on the head CT's validation slices (40-42, 67-69) at doses 0.5, 0.25, 0.1 and
# 0.05 by the best mean PSNR: bench/results/classical.json (`chosen`), written by `python bench/classical.py`.
NLM_STRENGTH = 1.4
"""Non-local means: h = NLM_STRENGTH · σ."""
TV_STRENGTH = 28.0
"""Total variation: weight = TV_STRENGTH · σ² (σ in HU/1000, so the strength is per 1000 HU)."""
BM3D_STRENGTH = 2.0
"""BM3D: sigma_psd = BM3D_STRENGTH · σ."""

BM3D_MISSING = (
    "BM3D needs the optional `bm3d` package, which is for benchmarks only (non-commercial licence): "
    "pip install 'need-pipeline[bench]' (or bm3d==4.0.3)"
)


def noise_sigma(image: np.ndarray) -> float:
    """Noise level σ of one slice, from the image itself: the median absolute finest-scale diagonal Haar detail over
    every 2 × 2 window, / 0.6745 (Donoho's MAD estimator; skimage's `estimate_sigma` is the same idea on a db2 wavelet
    but needs PyWavelets).

    On CT FBP noise it is a relative, not an absolute, measure (bench/results/classical.json, `sigma_estimate`): on
    pure FBP noise it reads 0.73 of the pixel standard deviation (the noise is correlated, with less power at the
    finest scale than white noise), and on head-CT slices the anatomy's own fine texture adds a floor that does not
    fall with dose, so the ratio runs from about 1.06 at 50 % dose to 0.81 at 5 % (skimage's estimate_sigma drifts
    alike, 0.94 to 0.74). That drift is why the strengths are chosen across all four doses at once. Where anatomy
    dominates the finest scale (coarse pixels: the head CT at 64² reads σ well above its noise) the denoisers
    over-smooth."""
    detail = (image[:-1, :-1] - image[1:, :-1] - image[:-1, 1:] + image[1:, 1:]) / 2.0
    return float(np.median(np.abs(detail)) / 0.6745)


def denoise_slices(fbp_ld_hu: np.ndarray, denoise: Callable[[np.ndarray, float], np.ndarray]) -> np.ndarray:
    """`denoise(slice in HU/1000, its σ)` for every slice of an (n, H, W) HU stack; HU float32 out. A slice without
    noise (σ = 0, e.g. constant) is returned as it is."""
    stack = np.asarray(fbp_ld_hu, dtype=np.float64)
    if stack.ndim != 3:
        raise ValueError(f"expected an (n, H, W) stack of HU images, got shape {stack.shape}")
    out = np.empty(stack.shape, dtype=np.float32)
    for i, image in enumerate(stack / HU_SCALE):
        sigma = noise_sigma(image)
        out[i] = (denoise(image, sigma) if sigma > 0 else image) * HU_SCALE
    return out


def _check_strength(strength: float) -> None:
    """Strengths are positive multiples of the noise level."""
    if not strength > 0:
        raise ValueError(f"strength must be positive, got {strength}")


def nlm_images(fbp_ld_hu: np.ndarray, strength: float = NLM_STRENGTH) -> np.ndarray:
    """Non-local means (scikit-image, fast mode) of every slice: h = strength · σ, and 2σ² taken off each patch
    distance (`sigma=σ`), so patches that differ only by noise count fully."""
    _check_strength(strength)
    return denoise_slices(
        fbp_ld_hu,
        lambda image, sigma: denoise_nl_means(
            image,
            h=strength * sigma,
            sigma=sigma,
            patch_size=NLM_PATCH_SIZE,
            patch_distance=NLM_PATCH_DISTANCE,
            fast_mode=True,
        ),
    )


def tv_images(fbp_ld_hu: np.ndarray, strength: float = TV_STRENGTH) -> np.ndarray:
    """Total-variation denoising (Chambolle) of every slice with weight = strength · σ² in HU/1000. σ², not σ: the
    weight trades TV against a data term of variance σ², as in the MAP estimate under a TV prior. On validation
    slices (bench/results/classical.json) weight ∝ σ wanted 1.4 at 5 % dose but 0.5 at 50 %, weight ∝ σ² wants 28
    at every dose."""
    _check_strength(strength)
    return denoise_slices(fbp_ld_hu, lambda image, sigma: denoise_tv_chambolle(image, weight=strength * sigma**2))


BM3D_LOCK = threading.Lock()


def _bm3d() -> ModuleType:
    """The optional `bm3d` package, imported on first use; ImportError with the way to install it when absent."""
    try:
        import bm3d
    except ImportError as error:
        raise ImportError(BM3D_MISSING) from error
    return bm3d


def bm3d_available() -> bool:
    """Whether the optional `bm3d` package imports."""
    try:
        _bm3d()
    except ImportError:
        return False
    return True


def bm3d_images(fbp_ld_hu: np.ndarray, strength: float = BM3D_STRENGTH) -> np.ndarray:
    """BM3D of every slice with white-noise sigma_psd = strength · σ, in the package's low-complexity profile (3×
    faster than its default profile, within 0.05 dB on a validation slice at 10 % dose)."""
    _check_strength(strength)
    bm3d = _bm3d()
    profile = bm3d.BM3DProfileLC()
    with BM3D_LOCK:  # its native thread pool aborts the process when two threads call it at once (the demo's doses)
        return denoise_slices(
            fbp_ld_hu, lambda image, sigma: bm3d.bm3d(image, sigma_psd=strength * sigma, profile=profile)
        )


DENOISERS: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "nlm": nlm_images,
    "tv": tv_images,
    "bm3d": bm3d_images,
}
"""Method name -> denoiser(fbp_ld_hu, strength), as the quality tables name them."""
STRENGTHS = {"nlm": NLM_STRENGTH, "tv": TV_STRENGTH, "bm3d": BM3D_STRENGTH}
"""Method name -> its chosen strength."""


def classical_methods() -> tuple[str, ...]:
    """The classical baselines this installation runs: `nlm` and `tv`, and `bm3d` when its package imports."""
    return ("nlm", "tv", "bm3d") if bm3d_available() else ("nlm", "tv")


def classical_baselines(fbp_ld_hu: np.ndarray) -> dict[str, np.ndarray]:
    """Each classical baseline (classical_methods) of an (n, H, W) LDCT FBP stack in HU, at its chosen strength."""
    return {method: DENOISERS[method](fbp_ld_hu, STRENGTHS[method]) for method in classical_methods()}
