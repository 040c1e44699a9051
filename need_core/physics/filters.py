"""Ramp filtering of projection rows for FBP: band-limited Ram-Lak kernel with optional windows.

The kernel is the spatial band-limited ramp h[0] = 1/(4 tau^2), h[n odd] = -1/(pi n tau)^2, h[n even] = 0
(Kak & Slaney ch. 3), zero-padded to the next power of two >= 2 * n_samples (ASTRA's choice, so all
backends filter identically); its DC term is exact, unlike a sampled |f|. Windows multiply the
ramp's spectrum at frequency f (cycles per sample, 0..1/2): Shepp-Logan sinc(f), Hann (1 + cos 2 pi f)/2.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import scipy.fft
import torch

from need_core.physics.validation import PhysicsInputError

FBP_FILTERS = ("ram-lak", "shepp-logan", "hann")


def check_filter_name(name: str) -> str:
    """Return `name` if it is a supported FBP filter, else raise PhysicsInputError listing them."""
    if name not in FBP_FILTERS:
        raise PhysicsInputError(f"unknown FBP filter {name!r}; expected one of {FBP_FILTERS}")
    return name


def padded_length(n_samples: int) -> int:
    """FFT length used for filtering rows of n_samples: next power of two >= 2 * n_samples."""
    return 1 << math.ceil(math.log2(2 * n_samples))


@functools.lru_cache(maxsize=32)
def ramp_filter_response(n_samples: int, spacing_mm: float, filter_name: str = "ram-lak") -> np.ndarray:
    """Real rfft-domain response (length padded_length/2 + 1) of the windowed ramp for sample spacing tau.

    Convolving a row with it gives tau * sum_j p[j] h[k - j], the discrete ramp-filtered projection.
    """
    check_filter_name(filter_name)
    length = padded_length(n_samples)
    offsets = np.minimum(np.arange(length), length - np.arange(length))
    kernel = np.zeros(length, dtype=np.float64)
    odd = offsets % 2 == 1
    kernel[odd] = -1.0 / (np.pi * offsets[odd]) ** 2
    kernel[0] = 0.25
    response = np.fft.rfft(kernel).real / spacing_mm
    frequency = np.arange(response.size) / length
    if filter_name == "shepp-logan":
        response *= np.sinc(frequency)
    elif filter_name == "hann":
        response *= 0.5 * (1.0 + np.cos(2.0 * np.pi * frequency))
    response.setflags(write=False)
    return response


def ramp_filter_numpy(rows: np.ndarray, spacing_mm: float, filter_name: str = "ram-lak") -> np.ndarray:
    """Ramp-filter the last axis of `rows` (float32 out), samples spaced `spacing_mm` apart."""
    n_samples = rows.shape[-1]
    response = ramp_filter_response(n_samples, float(spacing_mm), filter_name)
    length = padded_length(n_samples)
    spectrum = scipy.fft.rfft(rows, n=length, axis=-1)
    spectrum *= response.astype(np.float32)
    return scipy.fft.irfft(spectrum, n=length, axis=-1)[..., :n_samples].astype(np.float32, copy=False)


def ramp_filter_torch(rows: torch.Tensor, spacing_mm: float, filter_name: str = "ram-lak") -> torch.Tensor:
    """Ramp-filter the last axis of a torch tensor on its own device (same filter as ramp_filter_numpy)."""
    n_samples = rows.shape[-1]
    response = torch.tensor(
        ramp_filter_response(n_samples, float(spacing_mm), filter_name), dtype=rows.dtype, device=rows.device
    )
    length = padded_length(n_samples)
    spectrum = torch.fft.rfft(rows, n=length, dim=-1) * response
    return torch.fft.irfft(spectrum, n=length, dim=-1)[..., :n_samples]
