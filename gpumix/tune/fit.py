"""The per-device speed model tune fits, and its predictions.

A layer split runs the devices one after another for every token (llama.cpp's RPC backend has no pipeline
overlap), so one token costs Σ over used devices (bytes it reads × seconds per byte + a fixed overhead). Seconds per
byte is 1 / achieved bandwidth; the overhead (graph launch, RPC round trips, the hop) is taken equal for every
device, which is what makes it identifiable: each device alone gives bytes/bw + o, and any split adds one o per
extra device. Before a split has been measured a weak prior holds o at `prior_overhead_s`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import nnls

from gpumix.tune.layout import ModelLayout
from gpumix.tune.splits import Assignment

# Per used device per token, before a split is measured: a loopback RPC round trip plus a graph launch is
# ~0.1-1 ms (measured on this project's test bed: 1:1 split 11.7 t/s vs 13.4 t/s from the alone runs' times →
# ~10 ms for 2 devices on a busy 2-core VM; quiet machines are lower). 1 ms keeps the prior modest.
DEFAULT_PRIOR_OVERHEAD_S = 1e-3
_PRIOR_WEIGHT = 0.01  # weight of the prior row against one measurement


@dataclass(frozen=True)
class Observation:
    assignment: Assignment
    tokens_per_s: float

    @property
    def seconds_per_token(self) -> float:
        return 1.0 / self.tokens_per_s


@dataclass(frozen=True)
class SpeedModel:
    """Fitted: seconds per byte on each device (index n_devices = the host CPU) and the per-device overhead."""

    s_per_byte: tuple[float, ...]
    overhead_s: float
    identified: tuple[bool, ...]  # device appeared in a measurement
    overhead_identified: bool  # the measurements pin every fitted unknown (rank = unknowns), the prior none

    @property
    def identified_all(self) -> bool:
        return self.overhead_identified

    def bandwidth_gb_per_s(self, device: int) -> float:
        spb = self.s_per_byte[device]
        return 1.0 / spb / 1e9 if spb > 0 else float("inf")

    def seconds_per_token(self, assignment: Assignment, layout: ModelLayout) -> float:
        loads = device_loads(assignment, layout)
        return sum(b * self.s_per_byte[i] + self.overhead_s for i, b in loads.items())

    def tokens_per_s(self, assignment: Assignment, layout: ModelLayout) -> float:
        return 1.0 / self.seconds_per_token(assignment, layout)


def device_loads(assignment: Assignment, layout: ModelLayout) -> dict[int, int]:
    """Bytes read per token by each used device (key n_devices = host CPU)."""
    host = assignment.n_devices
    loads: dict[int, int] = {}
    for il, dev in enumerate(assignment.layer_device):
        key = host if dev < 0 else dev
        loads[key] = loads.get(key, 0) + layout.layer_bytes[il]
    out = host if assignment.output_device is None else assignment.output_device
    loads[out] = loads.get(out, 0) + layout.output_bytes
    return loads


def fit_speed_model(
    observations: Sequence[Observation],
    layout: ModelLayout,
    n_devices: int,
    prior_overhead_s: float = DEFAULT_PRIOR_OVERHEAD_S,
) -> SpeedModel:
    """Non-negative least squares on relative error, one row per measurement, plus a weak prior holding o near
    `prior_overhead_s`. A device no measurement touched is taken as fast as the fastest measured one: optimism
    makes the search measure it rather than rule it out unseen."""
    n_unknown = n_devices + 2  # devices, host, overhead
    rows: list[np.ndarray] = []
    targets: list[float] = []
    seen = [False] * (n_devices + 1)
    for obs in observations:
        t = obs.seconds_per_token
        row = np.zeros(n_unknown)
        loads = device_loads(obs.assignment, layout)
        for dev, nbytes in loads.items():
            row[dev] = nbytes
            seen[dev] = True
        row[-1] = len(loads)
        rows.append(row / t)
        targets.append(1.0)
    used_columns = [i for i in range(n_devices + 1) if seen[i]] + [n_unknown - 1]
    overhead_identified = bool(rows) and bool(np.linalg.matrix_rank(np.vstack(rows)[:, used_columns]) == len(used_columns))
    # The prior is an absolute error relative to a typical token time: decisive when o is not identified,
    # negligible against exact rows when it is.
    t_ref = float(np.mean([o.seconds_per_token for o in observations])) if observations else 1.0
    prior = np.zeros(n_unknown)
    prior[-1] = _PRIOR_WEIGHT / t_ref
    rows.append(prior)
    targets.append(_PRIOR_WEIGHT * prior_overhead_s / t_ref)
    solution = _solve(rows, targets, n_unknown)
    measured = [solution[i] for i in range(n_devices + 1) if seen[i] and solution[i] > 0]
    fallback = min(measured) if measured else 1.0 / 50e9
    s_per_byte = tuple(float(solution[i]) if seen[i] else fallback for i in range(n_devices + 1))
    return SpeedModel(s_per_byte, float(solution[-1]), tuple(seen), overhead_identified)


def _solve(rows: list[np.ndarray], targets: list[float], n_unknown: int) -> np.ndarray:
    a = np.vstack(rows)
    b = np.asarray(targets)
    # Columns differ by ~1e8 (bytes vs counts); scale them so NNLS is well conditioned.
    scale = np.maximum(np.abs(a).max(axis=0), 1e-30)
    x, _ = nnls(a / scale, b)
    return x / scale
