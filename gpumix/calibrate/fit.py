"""Fit the speed model's few physical parameters on measured llama.cpp throughput.

    python -m gpumix.calibrate.fit ../shared/calibration/measurements.csv ../shared/calibration/multigpu.csv --holdout

writes gpumix/estimate/data/calibration.json (the packaged fit `gpumix.estimate.default_calibration` reads; `-o FILE`
writes elsewhere, and `--calibration FILE` then uses it). Fitted: per backend (CUDA, Metal, Vulkan, ROCm) the achieved
fraction of peak bandwidth, a per-layer launch overhead and the achieved fraction of peak FLOP/s; per quant class
a bandwidth and a compute factor; one factor for HBM parts; one layer-split hop latency; and per architecture
family a compute factor pulled toward 1 (so a family with little data stays near the backend's mean). No per-GPU
parameter exists. Families also get a bandwidth factor (e.g. GDDR7 Blackwell reaches a higher share of peak at
batch 1 than Ampere did), with the same prior. Least squares on log(predicted/measured), all mapped rows; `--holdout` reports a
leave-GPUs-out check (5 folds by GPU: fit without them, predict them).
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares

from gpumix.calibrate.measurements import MappedRow, is_headline_row, map_file, predict_row
from gpumix.estimate.calibration import BackendParams, Calibration

BACKENDS = ("CUDA", "Metal", "Vulkan", "ROCm")
FAMILIES = ("Pascal", "Volta", "Turing", "Ampere", "Ada", "Hopper", "Blackwell", "RDNA", "CDNA", "GCN", "Apple")
DATA_FILE = Path(__file__).parents[1] / "estimate" / "data" / "calibration.json"  # packaged with gpumix.estimate
FAMILY_PRIOR_WEIGHT = 0.5  # residual weight pulling each family's compute/bandwidth factor toward 1 (log space)
# multigpu.csv repeats a few GPU models at 2-6 cards; weight single-GPU rows up so the many GPUs of
# measurements.csv, not the few multi-GPU boxes, set the per-device efficiencies.
SINGLE_GPU_WEIGHT = 1.5
# CPU backend: ../shared/calibration has no CPU rows (checked: every row's backend is CUDA, Metal, ROCm or Vulkan), so
# its one bandwidth fraction is fitted to one cited llama.cpp CPU decode measurement: Apple M1 CPU, 7B Q4_0, >= 53.3 GB/s
# of the 68.25 GB/s theoretical (128-bit LPDDR4X-4266), llama.cpp PR #1642 (comment by philipturner, 2023-06-04,
# https://github.com/ggml-org/llama.cpp/pull/1642). 53.3 / 68.25 = 0.781 for quantized weights; divided by the fitted
# quant factor for quantized weights (0.901) that is 0.867 of theoretical for a plain read, in line with desktop DDR4
# read benchmarks (AIDA64 memory read ~46 GB/s of 51.2 on dual-channel DDR4-3200, Guru3D G.Skill Trident Z Royal
# DDR4-3200 review, p. 10, https://www.guru3d.com/review/g-skill-tridentz-royal-ddr4-3200-mhz-review/page-10).
# Decode is also capped per thread (speed.CPU_GB_PER_S_PER_THREAD). Prefill reached ~58 t/s on one core for Gemma 3
# 270M (0.54 GFLOP/token) = 31 GFLOP/s of the 80 GFLOP/s AVX2 peak, measured with `llama-bench -t 1 -p 128` on this
# project's VM (noisy, shared). `gpumix tune` replaces both per device.
CPU_BANDWIDTH_EFFICIENCY = 0.867
CPU_PARAMS = BackendParams(bandwidth_efficiency=CPU_BANDWIDTH_EFFICIENCY, per_layer_overhead_s=20e-6,
                           compute_efficiency=0.39)  # fmt: skip

_NAMES: list[str] = (
    [f"bw_eff.{b}" for b in BACKENDS]
    + [f"layer_overhead_us.{b}" for b in BACKENDS]
    + [f"compute_eff.{b}" for b in BACKENDS]
    + ["bw_factor.q8", "bw_factor.quantized", "compute_factor.q8", "compute_factor.quantized", "hbm_factor",
       "link_latency_us"]  # fmt: skip
    + [f"arch.{f}" for f in FAMILIES]
    + [f"arch_bw.{f}" for f in FAMILIES]
)
_X0 = [0.8] * 4 + [30.0] * 4 + [0.4] * 4 + [0.9, 0.8, 0.8, 0.8, 0.7, 30.0] + [1.0] * (2 * len(FAMILIES))
_LOWER = [0.05] * 4 + [0.0] * 4 + [0.01] * 4 + [0.2, 0.2, 0.1, 0.1, 0.2, 0.0] + [0.2] * (2 * len(FAMILIES))
_UPPER = [1.0] * 4 + [400.0] * 4 + [1.0] * 4 + [1.0, 1.0, 3.0, 3.0, 1.0, 2000.0] + [3.0] * len(FAMILIES) + [1.5] * len(
    FAMILIES
)


def calibration_from_vector(x: Sequence[float] | np.ndarray, method: str = "", stats: dict | None = None) -> Calibration:
    p = dict(zip(_NAMES, x, strict=True))
    backends = {
        b: BackendParams(
            bandwidth_efficiency=p[f"bw_eff.{b}"],
            per_layer_overhead_s=p[f"layer_overhead_us.{b}"] * 1e-6,
            compute_efficiency=p[f"compute_eff.{b}"],
        )
        for b in BACKENDS
    }
    backends["CPU"] = CPU_PARAMS
    return Calibration(
        method=method,
        fit_stats=stats or {},
        backends=backends,
        quant_bandwidth_factor={"float": 1.0, "q8": p["bw_factor.q8"], "quantized": p["bw_factor.quantized"]},
        quant_compute_factor={"float": 1.0, "q8": p["compute_factor.q8"], "quantized": p["compute_factor.quantized"]},
        hbm_bandwidth_factor=p["hbm_factor"],
        link_latency_s=p["link_latency_us"] * 1e-6,
        arch_compute_factor={f: p[f"arch.{f}"] for f in FAMILIES},
        arch_bandwidth_factor={f: p[f"arch_bw.{f}"] for f in FAMILIES},
    )


def _residuals(x: np.ndarray, rows: list[MappedRow]) -> np.ndarray:
    cal = calibration_from_vector(x)
    out = [np.log(predict_row(r, cal) / r.measured_tokens_per_s) for r in rows]
    weights = [SINGLE_GPU_WEIGHT if len(r.devices) == 1 else 1.0 for r in rows]
    out = [w * e for w, e in zip(weights, out, strict=True)]
    prior = [FAMILY_PRIOR_WEIGHT * np.log(x[_NAMES.index(f"{k}.{f}")]) for k in ("arch", "arch_bw") for f in FAMILIES]
    return np.asarray(out + prior)


def fit_rows(rows: list[MappedRow]) -> np.ndarray:
    result = least_squares(_residuals, np.asarray(_X0), bounds=(_LOWER, _UPPER), args=(rows,), x_scale="jac")
    return result.x


def mape(rows: list[MappedRow], cal: Calibration, kind: str) -> tuple[int, float]:
    errs = [abs(predict_row(r, cal) / r.measured_tokens_per_s - 1) for r in rows if r.kind == kind]
    return len(errs), (sum(errs) / len(errs) if errs else float("nan"))


HOLDOUT_NOTE = "holdout_* = 5 folds by GPU model: fit without those GPUs, predict their single-GPU headline rows"


def holdout_check(rows: list[MappedRow], folds: int = 5, seed: int = 0) -> dict[str, float]:
    """Leave-GPUs-out: split the GPUs into folds; fit without a fold's GPUs, predict their rows."""
    def gpu_of(row: MappedRow) -> str:  # "4x A40" and "A40" are the same GPU model: hold both out together
        return row.devices[0].spec.name

    gpus = sorted({gpu_of(r) for r in rows})
    random.Random(seed).shuffle(gpus)
    held: list[tuple[MappedRow, float]] = []
    for k in range(folds):
        out = set(gpus[k::folds])
        train = [r for r in rows if gpu_of(r) not in out]
        cal = calibration_from_vector(fit_rows(train))
        held += [(r, predict_row(r, cal)) for r in rows if gpu_of(r) in out and is_headline_row(r)]
        held = [(r, p) for r, p in held if len(r.devices) == 1]  # the headline is stated on single-GPU rows
    stats: dict[str, float] = {}
    for kind in ("decode", "prefill"):
        errs = [abs(p / r.measured_tokens_per_s - 1) for r, p in held if r.kind == kind]
        stats[f"holdout_{kind}_n"] = len(errs)
        stats[f"holdout_{kind}_mape"] = round(sum(errs) / len(errs), 4) if errs else float("nan")
    return stats


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv", nargs="+", type=Path)
    parser.add_argument("--holdout", action="store_true", help="also run the leave-GPUs-out check (slow)")
    parser.add_argument("-o", "--output", type=Path, default=DATA_FILE)
    args = parser.parse_args(argv)
    per_file: dict[str, list[MappedRow]] = {path.name: map_file(path)[2] for path in args.csv}
    rows = [r for file_rows in per_file.values() for r in file_rows]
    x = fit_rows(rows)
    cal = calibration_from_vector(x)
    stats: dict[str, float | int | str] = {"rows_fitted": len(rows)}
    for name, file_rows in per_file.items():
        headline = [r for r in file_rows if is_headline_row(r)]
        for kind in ("decode", "prefill"):
            n, err = mape(headline, cal, kind)
            stats[f"{name}:headline_{kind}_n"] = n
            stats[f"{name}:headline_{kind}_mape"] = round(err, 4)
    if args.holdout:
        stats.update(holdout_check(rows))
    method = (
        f"scipy.optimize.least_squares on log(predicted/measured) over {len(rows)} rows of "
        f"{', '.join(p.name for p in args.csv)} (all mapped tgN/ppN rows, single-GPU rows weighted "
        f"{SINGLE_GPU_WEIGHT}; family compute and bandwidth factors with a log-prior of weight {FAMILY_PRIOR_WEIGHT} "
        f"toward 1); fitted {datetime.now(UTC).date().isoformat()} by "
        "`python -m gpumix.calibrate.fit " + " ".join(str(p) for p in args.csv) + (" --holdout" if args.holdout else "")
        + "`" + (f" ({HOLDOUT_NOTE})" if args.holdout else "")
    )
    cal = calibration_from_vector(x, method=method, stats=stats)
    payload = json.loads(cal.model_dump_json())
    payload["parameters"] = {name: round(float(v), 6) for name, v in zip(_NAMES, x, strict=True)}
    args.output.write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    main()
