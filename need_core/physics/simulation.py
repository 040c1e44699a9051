"""The one scan simulator of the project (NEED_SPEC.md §1): HU images -> line integrals -> normal- and low-dose
pre-log transmission -> FBP. Ingest, training validation and every benchmark call it, so they all see the same data.

HU clipping: HU below AIR_HU = -1000 (e.g. -1024 padding) is clipped to it before the conversion to attenuation,
because attenuation is never negative (mu >= 0). Unclipped, such air would give negative line integrals, i.e.
transmission above 1, which no scanner measures.

Seeding: the noise of slice s at dose d in stream k comes from slice_rng(seed, s, d, k) alone. It never depends on
which slices are simulated together (chunking), and streams keep e.g. validation noise apart from the archive's.

    >>> geometry = FanBeamGeometry.for_image((32, 32), 1.0)
    >>> scan = simulate_scan(np.zeros((2, 32, 32)), geometry, PhysicsSettings(), [0.25], seed=0, slice_indices=[7, 8])
    >>> scan.proj_ld[0.25].shape == (2, *geometry.sinogram_shape), scan.fbp(0.25).shape
    (True, (2, 32, 32))
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from need_core.physics.filtered_backprojection import fbp_hu
from need_core.physics.geometry import FanBeamGeometry
from need_core.physics.noise import simulate_transmission, transmission_to_line_integrals
from need_core.physics.phantoms import AIR_HU
from need_core.physics.projector import forward_project
from need_core.physics.settings import PhysicsSettings
from need_core.physics.units import hu_to_mu
from need_core.physics.validation import PhysicsInputError, require_dose_fraction
from need_core.random_streams import dose_key

NORMAL_DOSE = 1.0
"""Dose fraction of the normal-dose scan (proj_nd, fbp_nd): incident count I0 itself."""
ARCHIVE_STREAM = 0
"""Noise stream of the archive written by `need ingest` (and of every benchmark, which must see the same data)."""


def slice_rng(seed: int, slice_index: int, dose: float, stream: int = ARCHIVE_STREAM) -> np.random.Generator:
    """The generator of one slice's noise at one dose: a function of (seed, stream, slice, dose) only.

    The archive stream keeps the entropy (seed, slice, dose) that every archive was written with; any other stream
    k uses (seed, k, slice, dose).
    """
    dose_part = dose_key(dose)  # parts per million
    entropy = [seed, slice_index, dose_part] if stream == ARCHIVE_STREAM else [seed, stream, slice_index, dose_part]
    return np.random.default_rng(entropy)


def attenuation_from_hu(image_hu: Any, physics: PhysicsSettings) -> np.ndarray:
    """Attenuation mu (1/mm) of HU images, with HU below AIR_HU clipped to it first (mu >= 0)."""
    return hu_to_mu(np.maximum(np.asarray(image_hu), AIR_HU), physics.mu_water_per_mm)


@dataclass(frozen=True, eq=False)  # arrays: compared by identity, not elementwise
class SimulatedScan:
    """Simulated scans of n slices: noise-free line integrals and normalised transmission (n, views, det) at normal
    dose (`proj_nd`) and at each low dose (`proj_ld[d]`), with the geometry and physics that FBP needs."""

    slice_indices: tuple[int, ...]
    line_integrals: np.ndarray
    proj_nd: np.ndarray
    proj_ld: Mapping[float, np.ndarray]
    geometry: FanBeamGeometry
    physics: PhysicsSettings
    backend: str = "auto"

    def transmission(self, dose: float) -> np.ndarray:
        """Normalised transmission at `dose`: proj_nd at NORMAL_DOSE, else proj_ld[dose]."""
        if dose == NORMAL_DOSE:
            return self.proj_nd
        if dose not in self.proj_ld:
            raise PhysicsInputError(f"dose {dose} was not simulated; this scan has {sorted(self.proj_ld)}")
        return self.proj_ld[dose]

    def reconstruct(self, transmission: np.ndarray, filter: str = "ram-lak", backend: str | None = None) -> np.ndarray:
        """FBP in HU (n, ny, nx) of normalised transmission measured with this scan's geometry (e.g. a denoised
        one), post-log with the default transmission floor; `backend` defaults to the scan's."""
        return fbp_hu(
            transmission_to_line_integrals(transmission),
            self.geometry,
            self.physics,
            filter=filter,
            backend=backend or self.backend,
        )

    def fbp(self, dose: float = NORMAL_DOSE, filter: str = "ram-lak", backend: str | None = None) -> np.ndarray:
        """FBP in HU (n, ny, nx) of the scan at `dose`."""
        return self.reconstruct(self.transmission(dose), filter, backend)

    @functools.cached_property
    def fbp_nd(self) -> np.ndarray:
        """The normal-dose image (ramp FBP of proj_nd, HU): the reference of every quality figure (NEED_SPEC.md §5)."""
        return self.fbp(NORMAL_DOSE)

    def select(self, slice_indices: Sequence[int]) -> SimulatedScan:
        """The same scans restricted to some of the slices (e.g. without the halo slices), in the order given."""
        position = {s: row for row, s in enumerate(self.slice_indices)}
        missing = [s for s in slice_indices if s not in position]
        if missing:
            raise PhysicsInputError(f"slices {missing} were not simulated; this scan has {list(self.slice_indices)}")
        rows = [position[s] for s in slice_indices]
        return SimulatedScan(
            slice_indices=tuple(int(s) for s in slice_indices),
            line_integrals=self.line_integrals[rows],
            proj_nd=self.proj_nd[rows],
            proj_ld={dose: x[rows] for dose, x in self.proj_ld.items()},
            geometry=self.geometry,
            physics=self.physics,
            backend=self.backend,
        )


def simulate_dose(
    line_integrals: np.ndarray,
    dose: float,
    physics: PhysicsSettings,
    *,
    seed: int,
    slice_indices: Sequence[int],
    stream: int = ARCHIVE_STREAM,
) -> np.ndarray:
    """Normalised transmission (n, views, det) at `dose` of the line integrals of slices `slice_indices`, each slice
    with its own slice_rng(seed, slice, dose, stream)."""
    return np.stack(
        [
            simulate_transmission(p, dose, physics, slice_rng(seed, int(s), dose, stream))
            for p, s in zip(line_integrals, slice_indices, strict=True)
        ]
    )


def simulate_scan(
    image_hu: Any,
    geometry: FanBeamGeometry,
    physics: PhysicsSettings,
    doses: Sequence[float],
    *,
    seed: int,
    slice_indices: Sequence[int],
    stream: int = ARCHIVE_STREAM,
    backend: str = "auto",
) -> SimulatedScan:
    """Forward-project HU images (n, ny, nx) of the slices `slice_indices` (after clipping at AIR_HU) and simulate
    their normal-dose scan and one scan per low dose in `doses` (NORMAL_DOSE may be listed; it is proj_nd).

    `backend` serves forward projection and FBP ("auto", or an ASTRA/FBP backend name valid for both).
    """
    images = np.asarray(image_hu)
    if images.ndim != 3 or len(slice_indices) != images.shape[0]:
        raise PhysicsInputError(
            f"image_hu must be (n, ny, nx) with one slice index per image; got {images.shape} and "
            f"{len(slice_indices)} indices"
        )
    line_integrals = forward_project(attenuation_from_hu(images, physics), geometry, backend=backend)
    simulate = functools.partial(
        simulate_dose, line_integrals, physics=physics, seed=seed, slice_indices=slice_indices, stream=stream
    )
    low_doses = [require_dose_fraction(d) for d in doses if d != NORMAL_DOSE]
    return SimulatedScan(
        slice_indices=tuple(int(s) for s in slice_indices),
        line_integrals=line_integrals,
        proj_nd=simulate(NORMAL_DOSE),
        proj_ld={dose: simulate(dose) for dose in low_doses},
        geometry=geometry,
        physics=physics,
        backend=backend,
    )
