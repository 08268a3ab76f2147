"""A fixed calibration for the planner tests, so optimiser tests do not move when the estimator is refitted."""

from __future__ import annotations

from gpumix.estimate.calibration import BackendParams, Calibration

# Round numbers in the range the fitted calibration lands in (achieved ≈ 0.6-0.85 of peak bandwidth, tens of µs of
# launch overhead per layer); the optimiser tests check optimality of the model, not its accuracy.
FIXED_CALIBRATION = Calibration(
    method="test fixture",
    backends={
        "CUDA": BackendParams(bandwidth_efficiency=0.8, per_layer_overhead_s=20e-6, compute_efficiency=0.5),
        "CPU": BackendParams(bandwidth_efficiency=0.7, per_layer_overhead_s=5e-6, compute_efficiency=0.5),
    },
    quant_bandwidth_factor={},
    quant_compute_factor={},
)

