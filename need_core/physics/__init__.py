"""CT physics for NEED: fan-beam geometry (mm), ASTRA projection, FBP, dose simulation, the scan simulator and HU
units.

Pure numpy/torch/ASTRA; see NEED_SPEC.md §1 (measurement model) and §3 (FBP).
"""

from need_core.physics.astra_support import BackendUnavailableError, astra_cuda_available
from need_core.physics.filtered_backprojection import FBP_BACKENDS, fbp, fbp_hu
from need_core.physics.filters import FBP_FILTERS
from need_core.physics.geometry import FanBeamGeometry, GeometryError
from need_core.physics.noise import (
    TRANSMISSION_FLOOR,
    line_integrals_to_transmission,
    shifted_poisson_counts,
    simulate_counts,
    simulate_transmission,
    transmission_to_line_integrals,
)
from need_core.physics.phantoms import CylinderPhantom, water_cylinder_phantom
from need_core.physics.projector import forward_project
from need_core.physics.settings import PhysicsSettings
from need_core.physics.simulation import (
    AIR_HU,
    ARCHIVE_STREAM,
    NORMAL_DOSE,
    SimulatedScan,
    attenuation_from_hu,
    simulate_dose,
    simulate_scan,
    slice_rng,
)
from need_core.physics.units import hu_to_mu, mu_to_hu
from need_core.physics.validation import PhysicsInputError

__all__ = [
    "AIR_HU",
    "ARCHIVE_STREAM",
    "FBP_BACKENDS",
    "FBP_FILTERS",
    "NORMAL_DOSE",
    "TRANSMISSION_FLOOR",
    "BackendUnavailableError",
    "CylinderPhantom",
    "FanBeamGeometry",
    "GeometryError",
    "PhysicsInputError",
    "PhysicsSettings",
    "SimulatedScan",
    "astra_cuda_available",
    "attenuation_from_hu",
    "fbp",
    "fbp_hu",
    "forward_project",
    "hu_to_mu",
    "line_integrals_to_transmission",
    "mu_to_hu",
    "shifted_poisson_counts",
    "simulate_counts",
    "simulate_dose",
    "simulate_scan",
    "simulate_transmission",
    "slice_rng",
    "transmission_to_line_integrals",
    "water_cylinder_phantom",
]
