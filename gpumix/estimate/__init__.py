"""Estimate memory and speed of a model on devices (pure: no I/O beyond reading packaged data)."""

from gpumix.estimate.calibration import Calibration, default_calibration, load_calibration
from gpumix.estimate.estimator import estimate, layers_for, proportional_layers
from gpumix.estimate.types import DeviceEstimate, Estimate, Links, Placement, Workload

__all__ = [
    "Calibration",
    "DeviceEstimate",
    "Estimate",
    "Links",
    "Placement",
    "Workload",
    "default_calibration",
    "estimate",
    "layers_for",
    "load_calibration",
    "proportional_layers",
]
