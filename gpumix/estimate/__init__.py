"""Estimate memory and speed of a model on devices (pure: no I/O beyond reading packaged data).

The calibration to use is an argument (`Calibration`); `default_calibration()` is the packaged fit. Machine
calibration files are read by the calibration stage (`gpumix.calibrate.files.load_calibration`) and the CLI.
"""

from gpumix.estimate.calibration import Calibration, default_calibration
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
    "proportional_layers",
]
