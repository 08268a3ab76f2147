"""Fit the CPU speed model's three physical parameters to this machine's single-thread llama-bench samples.

    python bench/cpu/fit_cpu.py                 # fit on every bench/cpu/results/*.json, print values and errors
    python bench/cpu/fit_cpu.py --out FILE.json # also write them (bench/cpu/fit_cpu.json is the committed output)

Data: the one-thread `tg64` (decode) and `pp128` (prefill) rows of every results file. For each model and test the
FASTEST sample over all runs is used: the VM's 2 cores are shared with other sessions, and contention only ever slows
a run down, so the fastest sample is the least contended measurement of the CPU itself (the means are kept in the
JSON files). Two-thread rows are left out: with a second busy vCPU they measure the neighbours (RESULTS.md).

Parameters (everything else is the packaged calibration and the speed model unchanged, so the fit predicts through
the same `gpumix.estimate.estimate` call as `gpumix plan` and bench/cpu/run_cpu_bench.py):
  - per-thread streaming bandwidth (GB/s): speed.CPU_GB_PER_S_PER_THREAD, the cap of CPU decode at threads x it;
  - per-layer per-token overhead (s): the CPU backend's `per_layer_overhead_s` (norms, RoPE, attention, thread
    barriers: work that does not scale with the weight bytes);
  - prefill compute efficiency: the CPU backend's `compute_efficiency`, achieved / (cores x CPU_FLOP_PER_CORE_PER_S).
Method: scipy.optimize.least_squares on log(predicted / fastest measured) over the 8 models x {decode, prefill},
equal weights, parameters in log space. No per-model terms.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares

from gpumix.estimate import Placement, Workload, estimate, speed
from gpumix.estimate.calibration import BackendParams, Calibration, default_calibration
from gpumix.hardware.discovery import this_machine_cpu
from gpumix.models.catalog import load_model, resolve_quant
from gpumix.models.spec import ModelSpec

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run_cpu_bench import model_path  # noqa: E402  (the bench script's own way to find each model file)

N_PROMPT, N_GEN = 128, 64  # the bench's -p / -n
KINDS = {f"tg{N_GEN}": "decode", f"pp{N_PROMPT}": "prefill"}
# The CPU parameters before this fit (per-thread GB/s, per-layer overhead s, compute efficiency): 5.3 GB/s from one
# load-affected Gemma 3 270M decode, 20 us and 0.39 from earlier single runs. Kept for the before/after table.
PREVIOUS = (5.3, 20e-6, 0.39)


@dataclass(frozen=True)
class Point:
    model: str
    kind: str  # decode | prefill
    best_tokens_per_s: float
    source: str  # results file of the fastest sample
    load_avg: float  # load average before that run


def fastest_samples(files: list[Path], threads: int = 1) -> list[Point]:
    """Per (model, test) the fastest sample over all files' rows at `threads` threads."""
    best: dict[tuple[str, str], Point] = {}
    for f in files:
        for row in json.loads(f.read_text())["rows"]:
            kind = KINDS.get(row["test"])
            if row["threads"] != threads or kind is None:
                continue
            value = max(row["samples_tokens_per_s"] or [row["best_tokens_per_s"]])
            key = (row["model"], kind)
            if key not in best or value > best[key].best_tokens_per_s:
                best[key] = Point(row["model"], kind, value, f.name, row["load_avg_before"])
    return sorted(best.values(), key=lambda p: (list(dict.fromkeys(k[0] for k in best)).index(p.model), p.kind))


@contextmanager
def per_thread_bandwidth(gb_per_s: float) -> Iterator[None]:
    """The speed model's per-thread cap set to a trial value (a module constant; restored afterwards)."""
    saved = speed.CPU_GB_PER_S_PER_THREAD
    speed.CPU_GB_PER_S_PER_THREAD = gb_per_s
    try:
        yield
    finally:
        speed.CPU_GB_PER_S_PER_THREAD = saved


def with_cpu_params(cal: Calibration, layer_overhead_s: float, compute_efficiency: float) -> Calibration:
    cpu = cal.backend("CPU")
    backend = BackendParams(bandwidth_efficiency=cpu.bandwidth_efficiency, per_layer_overhead_s=layer_overhead_s,
                            compute_efficiency=compute_efficiency)  # fmt: skip
    return cal.model_copy(update={"backends": {**cal.backends, "CPU": backend}})


def predict(model: ModelSpec, kind: str, cal: Calibration, threads: int = 1) -> float:
    """The bench's prediction (run_cpu_bench.predict) for one model and test under `cal`."""
    device = this_machine_cpu(threads=threads)
    placement = Placement(mode="single", devices=(device,))
    quant = resolve_quant(model.file_quant or "q4_k_m")  # every bench model is a GGUF with its quant
    context = N_GEN if kind == "decode" else N_PROMPT
    est = estimate(model, quant, placement, Workload(context=context, parallel=1, prompt_tokens=N_PROMPT),
                   calibration=cal)  # fmt: skip
    return est.decode_tokens_per_s if kind == "decode" else est.prefill_tokens_per_s


def predictions(x: np.ndarray, points: list[Point], models: dict[str, ModelSpec], base: Calibration,
                threads: int = 1) -> np.ndarray:  # fmt: skip
    bw, overhead_s, eff = (float(v) for v in np.exp(x))
    cal = with_cpu_params(base, overhead_s, eff)
    with per_thread_bandwidth(bw):
        return np.array([predict(models[p.model], p.kind, cal, threads) for p in points])


def fit(points: list[Point], models: dict[str, ModelSpec], base: Calibration) -> np.ndarray:
    measured = np.array([p.best_tokens_per_s for p in points])

    def residuals(x: np.ndarray) -> np.ndarray:
        return np.log(predictions(x, points, models, base) / measured)

    x0 = np.log([10.0, 100e-6, 0.5])
    lower = np.log([1.0, 1e-6, 0.05])
    upper = np.log([100.0, 5e-3, 3.0])
    result = least_squares(residuals, x0, bounds=(lower, upper), x_scale=1.0, diff_step=[1e-3] * 3)
    return result.x


def table(points: list[Point], before: np.ndarray, after: np.ndarray) -> list[dict[str, object]]:
    return [
        {"model": p.model, "kind": p.kind, "fastest_tokens_per_s": p.best_tokens_per_s, "from": p.source,
         "load_avg_before": p.load_avg, "predicted_before": round(float(b), 2), "predicted_packaged": round(float(a), 2),
         "error_before_pct": round(100 * (b / p.best_tokens_per_s - 1), 1),
         "error_packaged_pct": round(100 * (a / p.best_tokens_per_s - 1), 1)}
        for p, b, a in zip(points, before, after, strict=True)
    ]  # fmt: skip


def rms_log(points: list[Point], pred: np.ndarray) -> float:
    measured = np.array([p.best_tokens_per_s for p in points])
    return float(np.sqrt(np.mean(np.log(pred / measured) ** 2)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", type=Path, default=sorted((HERE / "results").glob("cpu-*.json")))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    points = fastest_samples(args.files)
    models = {ref: load_model(model_path(ref, "q4_k_m")) for ref in dict.fromkeys(p.model for p in points)}
    base = default_calibration()
    cpu = base.backend("CPU")
    packaged = np.log([speed.CPU_GB_PER_S_PER_THREAD, cpu.per_layer_overhead_s, cpu.compute_efficiency])
    previous = np.log(PREVIOUS)
    x = fit(points, models, base)
    before, after = predictions(previous, points, models, base), predictions(packaged, points, models, base)
    bw, overhead_s, eff = (float(v) for v in np.exp(x))
    cpu_peak = this_machine_cpu(threads=1).spec.mem_bandwidth_gb_per_s * cpu.bandwidth_efficiency
    two_threads = fastest_samples(args.files, threads=2)
    out = {
        "method": "scipy.optimize.least_squares on log(predicted/fastest measured), 8 models x {tg64, pp128} at "
                  "1 thread, fastest sample over all files (least contended), parameters in log space, equal weights",
        "files": [f.name for f in args.files],
        "before": {"cpu_gb_per_s_per_thread": PREVIOUS[0], "per_layer_overhead_s": PREVIOUS[1],
                   "compute_efficiency": PREVIOUS[2], "rms_log_error": round(rms_log(points, before), 4)},
        "fitted": {"cpu_gb_per_s_per_thread": round(bw, 2), "per_layer_overhead_s": round(overhead_s, 7),
                   "compute_efficiency": round(eff, 3),
                   "rms_log_error": round(rms_log(points, predictions(x, points, models, base)), 4)},
        "packaged": {"cpu_gb_per_s_per_thread": speed.CPU_GB_PER_S_PER_THREAD,
                     "per_layer_overhead_s": cpu.per_layer_overhead_s, "compute_efficiency": cpu.compute_efficiency,
                     "rms_log_error": round(rms_log(points, after), 4)},
        "ram_gb_per_s_times_fraction": round(cpu_peak, 2),
        "rows": table(points, before, after),
        "two_threads_not_fitted": table(two_threads, predictions(previous, two_threads, models, base, 2),
                                        predictions(packaged, two_threads, models, base, 2)),
    }  # fmt: skip
    print(f"fitted: {bw:.2f} GB/s per thread, {overhead_s * 1e6:.0f} us per layer per token, "
          f"prefill compute efficiency {eff:.3f} (of {speed.CPU_FLOP_PER_CORE_PER_S / 1e9:.0f} GFLOP/s per core)")
    print(f"packaged (gpumix now): {speed.CPU_GB_PER_S_PER_THREAD:g} GB/s, {cpu.per_layer_overhead_s * 1e6:g} us, "
          f"{cpu.compute_efficiency:g}; rms log error {out['before']['rms_log_error']} before -> "  # type: ignore[index]
          f"{out['fitted']['rms_log_error']} fitted, {out['packaged']['rms_log_error']} packaged; "  # type: ignore[index]
          f"1-thread cap {bw:.1f} vs RAM x fraction {cpu_peak:.1f} GB/s")
    print("| model | test | fastest t/s | before | error | packaged | error |")
    print("|---|---|---|---|---|---|---|")
    for r in out["rows"]:  # type: ignore[attr-defined]
        print(f"| {str(r['model']).removeprefix('pypi:')} | {r['kind']} | {r['fastest_tokens_per_s']:.1f} | "
              f"{r['predicted_before']:.1f} | {r['error_before_pct']:+.0f}% | {r['predicted_packaged']:.1f} | "
              f"{r['error_packaged_pct']:+.0f}% |")
    if args.out:
        args.out.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0 if math.isfinite(overhead_s) else 1


if __name__ == "__main__":
    sys.exit(main())
