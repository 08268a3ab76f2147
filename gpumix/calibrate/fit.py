"""Fit the speed model's few physical parameters on measured llama.cpp throughput, and derive its prediction ranges.

    python -m gpumix.calibrate.fit ../shared/calibration/measurements.csv ../shared/calibration/multigpu.csv --holdout

writes gpumix/estimate/data/calibration.json (the packaged fit `gpumix.estimate.default_calibration` reads; `-o FILE`
writes elsewhere, and `--calibration FILE` then uses it) and, with --holdout, the held-out residuals the prediction
ranges come from (bench/calibration/holdout_residuals.csv; `--residuals FILE` writes elsewhere).

Fitted: per backend (CUDA, Metal, Vulkan, ROCm) the achieved fraction of peak bandwidth, a per-layer launch overhead
and the achieved fraction of peak FLOP/s; per quant class a bandwidth and a compute factor; one factor for HBM parts;
one layer-split hop latency; per architecture family a compute factor pulled toward 1 and a bandwidth factor pulled
toward the mean of its vendor's families (VENDOR_FAMILIES; so a family with little or no data decodes like its
vendor's other architectures); and per llama.cpp era (gpumix.estimate.eras) a decode and a prefill
efficiency factor relative to the era of the llama.cpp gpumix builds, which is fixed at 1; per quant class the
ALU operations per weight of decode (a roofline beside bytes / bandwidth, against the matrix peak) and of prefill
(added to the matrix time, against the plain FP32 ALU peak). No per-GPU parameter exists. Each row is predicted for its own build's era (gpumix.calibrate.engine_notes). Least squares on
log(predicted/measured) over all mapped rows except those whose notes flag them as anomalous ("treat with caution"):
those are left out of the fit and of every score, and `gpumix validate` still lists them.

`--holdout` runs the leave-GPUs-out check: the GPU models are split into 5 folds; each fold's GPUs (with their
multi-GPU rows) are predicted by a fit made without them. Its MAPEs are the accuracy on GPUs gpumix has no data for,
and its residuals log(measured/predicted) give the 80 % prediction bands: per kind (decode/prefill) the 10th and 90th
percentiles, and per backend where that backend has at least BAND_MIN_ROWS held-out rows. The bands' own honesty
is checked the same way (nested): each fold's coverage uses bands from the other folds' residuals only.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import least_squares
from scipy.sparse import lil_matrix

from gpumix.calibrate.measurements import MappedRow, is_headline_row, map_file, predict_row
from gpumix.estimate.calibration import (
    BackendParams,
    Calibration,
    PredictionBand,
    arch_family,
    memory_technology,
    quant_class,
    quant_factor,
)
from gpumix.estimate.eras import ERA_NAMES, GPUMIX_ERA, GPUMIX_LLAMA_CPP

BACKENDS = ("CUDA", "Metal", "Vulkan", "ROCm")
FAMILIES = ("Pascal", "Volta", "Turing", "Ampere", "Ada", "Hopper", "Blackwell", "RDNA", "CDNA", "GCN", "Apple")
FITTED_ERAS = tuple(e for e in ERA_NAMES if e != GPUMIX_ERA)  # the reference era's factors are 1 by definition
DATA_FILE = Path(__file__).parents[1] / "estimate" / "data" / "calibration.json"  # packaged with gpumix.estimate
RESIDUALS_FILE = Path(__file__).parents[2] / "bench" / "calibration" / "holdout_residuals.csv"
FAMILY_PRIOR_WEIGHT = 0.5  # residual weight of the family-factor prior (log space; see VENDOR_FAMILIES)
# multigpu.csv repeats a few GPU models at 2-6 cards; weight single-GPU rows up so the many GPUs of
# measurements.csv, not the few multi-GPU boxes, set the per-device efficiencies.
SINGLE_GPU_WEIGHT = 1.5
HOLDOUT_FOLDS = 5
BAND_QUANTILES = (0.10, 0.90)  # an 80 % interval
BAND_MIN_ROWS = 25  # held-out rows a backend needs for its own band; fewer -> the all-backend band
# CPU backend: ../shared/calibration has no CPU rows (checked: every row's backend is CUDA, Metal, ROCm or Vulkan), so
# its one bandwidth fraction comes from one cited llama.cpp CPU decode measurement: Apple M1 CPU, 7B Q4_0, >= 53.3 GB/s
# of the 68.25 GB/s theoretical (128-bit LPDDR4X-4266), llama.cpp PR #1642 (comment by philipturner, 2023-06-04,
# https://github.com/ggml-org/llama.cpp/pull/1642): 53.3 / 68.25 = 0.781 for Q4_0 weights, divided by the fitted
# bandwidth factor of Q4_0's quant class (so a plain read, as for the GPU backends; capped at 1). With the era-free fit
# of 2026-11-22 that was 0.781 / 0.901 = 0.867, in line with desktop DDR4 read benchmarks (AIDA64 memory read ~46 GB/s
# of 51.2 on dual-channel DDR4-3200, Guru3D G.Skill Trident Z Royal DDR4-3200 review, p. 10,
# https://www.guru3d.com/review/g-skill-tridentz-royal-ddr4-3200-mhz-review/page-10).
# Decode is also capped per thread (speed.CPU_GB_PER_S_PER_THREAD). That cap, the per-layer per-token overhead and the
# prefill compute efficiency (of cores x speed.CPU_FLOP_PER_CORE_PER_S) were fitted together on 2026-11-29 by
# bench/cpu/fit_cpu.py: scipy least squares on log(predicted / measured) over 8 models (2 real GGUFs, 6 synthetic
# Q4_K_M catalog models) x {llama-bench tg64, pp128} at -t 1 -ngl 0, the fastest sample of each in
# bench/cpu/results/cpu-2026-11-29T*.json (least contended: the VM is shared), on this project's VM (AMD EPYC, 2
# cores, AVX2/FMA/F16C), llama.cpp 0.5.0-dev commit 0c1e570. Fitted 14.57 GB/s, 278 us, 0.704 (bench/cpu/fit_cpu.json;
# before: 5.3 GB/s, 20 us, 0.39 from single load-affected runs). The overhead is the per-layer work that does not scale
# with weight bytes (norms, RoPE, attention, thread barriers) on one such core. `gpumix tune` replaces all three with
# the device's own measurement.
CPU_Q4_0_BANDWIDTH_FRACTION = 53.3 / 68.25
CPU_PER_LAYER_OVERHEAD_S = 278e-6
CPU_COMPUTE_EFFICIENCY = 0.70


def cpu_params(quant_bandwidth_factor: dict[str, float]) -> BackendParams:
    """The CPU backend's parameters: its bandwidth fraction is the M1 CPU measurement over the fitted Q4_0 factor."""
    eff = min(1.0, CPU_Q4_0_BANDWIDTH_FRACTION / quant_factor(quant_bandwidth_factor, "q4_0"))
    return BackendParams(bandwidth_efficiency=round(eff, 4), per_layer_overhead_s=CPU_PER_LAYER_OVERHEAD_S,
                         compute_efficiency=CPU_COMPUTE_EFFICIENCY)  # fmt: skip


@dataclass(frozen=True)
class Param:
    name: str
    x0: float
    lower: float
    upper: float


PARAMS: tuple[Param, ...] = (
    *(Param(f"bw_eff.{b}", 0.8, 0.05, 1.0) for b in BACKENDS),
    *(Param(f"layer_overhead_us.{b}", 30.0, 0.0, 400.0) for b in BACKENDS),
    *(Param(f"compute_eff.{b}", 0.4, 0.01, 1.0) for b in BACKENDS),
    Param("bw_factor.q8", 0.9, 0.2, 1.0), Param("bw_factor.quantized", 0.8, 0.2, 1.0),
    Param("bw_factor.legacy", 0.8, 0.2, 1.0),
    Param("compute_factor.q8", 0.8, 0.1, 3.0), Param("compute_factor.quantized", 0.8, 0.1, 3.0),
    Param("compute_factor.legacy", 0.8, 0.1, 3.0),
    Param("hbm_factor", 0.7, 0.2, 1.0), Param("link_latency_us", 30.0, 0.0, 2000.0),
    *(Param(f"arch.{f}", 1.0, 0.2, 3.0) for f in FAMILIES),
    *(Param(f"arch_bw.{f}", 1.0, 0.2, 1.5) for f in FAMILIES),
    *(Param(f"era_decode.{e}", 1.0, 0.3, 3.0) for e in FITTED_ERAS),
    *(Param(f"era_prefill.{e}", 1.0, 0.3, 3.0) for e in FITTED_ERAS),
    *(Param(f"era_overhead.{e}", 1.0, 0.1, 10.0) for e in FITTED_ERAS),
    # Started where the ALU term binds on Apple parts, so the fit sees its gradient (a roofline max is flat elsewhere).
    *(Param(f"decode_ops.{c}", 30.0, 0.0, 300.0) for c in ("float", "q8", "legacy", "quantized")),
    *(Param(f"prefill_ops.{c}", 0.5, 0.0, 50.0) for c in ("float", "q8", "legacy", "quantized")),
)  # fmt: skip
_NAMES = [p.name for p in PARAMS]
# Architecture families by vendor. Decode's matrix-vector kernels are one code path per vendor (llama.cpp's CUDA
# mmvq/dmmv kernels on every NVIDIA generation, the same source built with HIP on every AMD one: plain loads, dp4a/FMA,
# no matrix instructions), so a family's bandwidth factor is pulled toward its vendor's mean, and a family with little
# or no data (an architecture left out of the fit) decodes like its vendor's others. Pulled toward 1 instead, as
# before, the Vulkan and ROCm rows that share families across vendors left the NVIDIA factors above 1 and the AMD ones
# below, so a left-out H100 was predicted 13-28 % slow and a left-out MI210 60 % fast. Prefill's matrix kernels use
# each generation's own matrix instructions (mma.sync, WMMA, MFMA, or none), so compute factors stay pulled toward 1.
VENDOR_FAMILIES: tuple[tuple[str, ...], ...] = (
    ("Pascal", "Volta", "Turing", "Ampere", "Ada", "Hopper", "Blackwell"), ("RDNA", "CDNA", "GCN"), ("Apple",),
)  # fmt: skip
VENDOR_CENTERED = ("arch_bw",)  # the family factors pulled toward their vendor's mean (the others toward 1)
_INDEX = {n: i for i, n in enumerate(_NAMES)}


def prior_terms(vendor_centered: Sequence[str] = VENDOR_CENTERED) -> list[tuple[int | None, tuple[int, ...]]]:
    """The prior's residual terms: (the factor's own parameter, or None for a group's mean anchor; the group's
    parameters). Kinds in `vendor_centered` group a vendor's families; the others are each their own group."""
    terms: list[tuple[int | None, tuple[int, ...]]] = []
    for kind in ("arch", "arch_bw"):
        groups = VENDOR_FAMILIES if kind in vendor_centered else tuple((f,) for v in VENDOR_FAMILIES for f in v)
        for families in groups:
            group = tuple(_INDEX[f"{kind}.{f}"] for f in families)
            terms += [(i, group) for i in group] if len(group) > 1 else []
            terms.append((None, group))
    return terms


_PRIOR_TERMS = prior_terms()


def calibration_from_vector(x: Sequence[float] | np.ndarray, method: str = "", stats: dict[str, Any] | None = None,
                            bands: dict[str, PredictionBand] | None = None, band_method: str = "") -> Calibration:  # fmt: skip
    p = dict(zip(_NAMES, (float(v) for v in x), strict=True))
    quant_classes = ("q8", "quantized", "legacy")
    backends = {
        b: BackendParams(
            bandwidth_efficiency=p[f"bw_eff.{b}"],
            per_layer_overhead_s=p[f"layer_overhead_us.{b}"] * 1e-6,
            compute_efficiency=p[f"compute_eff.{b}"],
        )
        for b in BACKENDS
    }
    quant_bandwidth = {"float": 1.0} | {c: p[f"bw_factor.{c}"] for c in quant_classes if f"bw_factor.{c}" in p}
    backends["CPU"] = cpu_params(quant_bandwidth)
    return Calibration(
        method=method,
        fit_stats=stats or {},
        backends=backends,
        quant_bandwidth_factor=quant_bandwidth,
        quant_compute_factor={"float": 1.0}
        | {c: p[f"compute_factor.{c}"] for c in quant_classes if f"compute_factor.{c}" in p},
        hbm_bandwidth_factor=p["hbm_factor"],
        link_latency_s=p["link_latency_us"] * 1e-6,
        arch_compute_factor={f: p[f"arch.{f}"] for f in FAMILIES},
        arch_bandwidth_factor={f: p[f"arch_bw.{f}"] for f in FAMILIES},
        decode_ops_per_weight={c: p[f"decode_ops.{c}"] for c in ("float", *quant_classes) if f"decode_ops.{c}" in p},
        prefill_ops_per_weight={c: p[f"prefill_ops.{c}"] for c in ("float", *quant_classes) if f"prefill_ops.{c}" in p},
        engine_era=GPUMIX_ERA,
        era_decode_factor={GPUMIX_ERA: 1.0} | {e: p[f"era_decode.{e}"] for e in FITTED_ERAS if f"era_decode.{e}" in p},
        era_prefill_factor={GPUMIX_ERA: 1.0} | {e: p[f"era_prefill.{e}"] for e in FITTED_ERAS if f"era_prefill.{e}" in p},
        era_overhead_factor={GPUMIX_ERA: 1.0} | {e: p[f"era_overhead.{e}"] for e in FITTED_ERAS if f"era_overhead.{e}" in p},
        bands=bands or {},
        band_method=band_method,
    )


def fit_set(rows: Sequence[MappedRow]) -> list[MappedRow]:
    """The rows a fit uses: every mapped row except those flagged anomalous in their notes."""
    return [r for r in rows if not r.caution]


def _residuals(x: np.ndarray, rows: list[MappedRow]) -> np.ndarray:
    cal = calibration_from_vector(x)
    out = [
        (SINGLE_GPU_WEIGHT if len(r.devices) == 1 else 1.0) * np.log(predict_row(r, cal) / r.measured_tokens_per_s)
        for r in rows
    ]
    return np.asarray(out + prior_residuals(x))


def prior_residuals(x: np.ndarray) -> list[float]:
    """Each family factor's log distance from its vendor's mean, and each vendor's mean log factor (the anchor
    that keeps the backend efficiencies, not the family factors, carrying the vendor's level), weighted
    FAMILY_PRIOR_WEIGHT."""
    logs = np.log(np.asarray(x, dtype=float))
    out = []
    for own, group in _PRIOR_TERMS:
        mean = float(np.mean(logs[list(group)]))
        out.append(FAMILY_PRIOR_WEIGHT * (mean if own is None else logs[own] - mean))
    return out


def params_of_row(row: MappedRow) -> set[str]:
    """The parameters a row's prediction depends on (the estimator's structure: its backend's efficiencies, its quant
    class's factors, its devices' families and memory technology, its era, the hop latency of a split)."""
    names = {f"bw_eff.{row.backend}", f"layer_overhead_us.{row.backend}", f"compute_eff.{row.backend}"}
    qclass = quant_class(row.quant.id)
    if qclass != "float":  # a legacy quant uses the "quantized" factors when no "legacy" ones are fitted
        names |= {f"{factor}.{c}" for factor in ("bw_factor", "compute_factor") for c in (qclass, "quantized")}
    names |= {f"{term}.{c}" for term in ("decode_ops", "prefill_ops") for c in (qclass, "quantized")}
    for device in row.devices:
        family = arch_family(device.spec)
        names |= {f"arch.{family}", f"arch_bw.{family}"}
        if memory_technology(device.spec) == "hbm":
            names.add("hbm_factor")
    if len(row.devices) > 1:
        names.add("link_latency_us")
    if row.engine.era in FITTED_ERAS:
        names |= {f"{kind}.{row.engine.era}" for kind in ("era_decode", "era_prefill", "era_overhead")}
    return names & set(_NAMES)


def jacobian_sparsity(rows: Sequence[MappedRow]) -> lil_matrix:
    """Which residual depends on which parameter: lets least_squares estimate several independent columns of the
    Jacobian (e.g. one backend's efficiency per backend) from one evaluation, ~4x fewer passes over the rows."""
    pattern = lil_matrix((len(rows) + len(_PRIOR_TERMS), len(_NAMES)), dtype=int)
    for i, row in enumerate(rows):
        for name in params_of_row(row):
            pattern[i, _INDEX[name]] = 1
    for k, (_own, group) in enumerate(_PRIOR_TERMS):
        for j in group:
            pattern[len(rows) + k, j] = 1
    return pattern


def fit_rows(rows: Sequence[MappedRow], max_nfev: int | None = None) -> np.ndarray:
    """The fitted parameter vector (least squares from the fixed start PARAMS.x0; caution rows left out)."""
    used = fit_set(rows)
    result = least_squares(
        _residuals, np.asarray([p.x0 for p in PARAMS]), bounds=([p.lower for p in PARAMS], [p.upper for p in PARAMS]),
        args=(used,), x_scale="jac", max_nfev=max_nfev, jac_sparsity=jacobian_sparsity(used),
    )  # fmt: skip
    return np.asarray(result.x)


def mape(rows: Sequence[MappedRow], cal: Calibration, kind: str) -> tuple[int, float]:
    errs = [abs(predict_row(r, cal) / r.measured_tokens_per_s - 1) for r in fit_set(rows) if r.kind == kind]
    return len(errs), (sum(errs) / len(errs) if errs else float("nan"))


# ---------------------------------------------------------------------------------------------- leave GPUs out


@dataclass(frozen=True)
class HeldOut:
    """One row predicted by a fit that never saw its GPU model."""

    file: str
    row: MappedRow
    fold: int
    predicted: float

    def sample(self) -> BandSample:
        r = self.row
        return BandSample(kind=r.kind, backend=r.backend, fold=self.fold, measured=r.measured_tokens_per_s,
                          predicted=self.predicted, headline=is_headline_row(r), devices=len(r.devices))  # fmt: skip


@dataclass(frozen=True)
class BandSample:
    """What the prediction bands are derived from: one held-out row's kind, backend, fold and error (one line of
    bench/calibration/holdout_residuals.csv)."""

    kind: str
    backend: str
    fold: int
    measured: float
    predicted: float
    headline: bool = False
    devices: int = 1

    @property
    def log_ratio(self) -> float:  # log(measured / predicted): > 0 = the GPU was faster than predicted
        return float(np.log(self.measured / self.predicted))


def gpu_of(row: MappedRow) -> str:
    """The GPU model a row belongs to ("4x A40" and "A40" are one model: held out together)."""
    return row.devices[0].spec.name


def holdout_folds(rows: Sequence[MappedRow], folds: int = HOLDOUT_FOLDS, seed: int = 0) -> list[set[str]]:
    gpus = sorted({gpu_of(r) for r in rows})
    random.Random(seed).shuffle(gpus)
    return [set(gpus[k::folds]) for k in range(folds)]


def holdout_predictions(
    per_file: dict[str, list[MappedRow]],
    folds: int = HOLDOUT_FOLDS,
    fit: Callable[[list[MappedRow]], np.ndarray] = fit_rows,
    progress: Callable[[str], None] = print,
) -> list[HeldOut]:
    """Every row of every GPU model, predicted by the fit made without that model's fold (caution rows excluded)."""
    tagged = [(name, r) for name, rows in per_file.items() for r in fit_set(rows)]
    held: list[HeldOut] = []
    for k, out in enumerate(holdout_folds([r for _, r in tagged], folds)):
        progress(f"holdout fold {k + 1}/{folds}: fitting without {len(out)} GPU models")
        cal = calibration_from_vector(fit([r for _, r in tagged if gpu_of(r) not in out]))
        held += [HeldOut(name, r, k, predict_row(r, cal)) for name, r in tagged if gpu_of(r) in out]
    return held


def band_of(log_ratios: Sequence[float]) -> PredictionBand:
    low, high = np.quantile(np.asarray(log_ratios), BAND_QUANTILES)
    return PredictionBand(low=round(float(np.exp(low)), 4), high=round(float(np.exp(high)), 4), n=len(log_ratios))


def derive_bands(samples: Sequence[BandSample]) -> dict[str, PredictionBand]:
    """Per kind: the band of all held-out rows; per kind and backend: its own band where it has BAND_MIN_ROWS."""
    bands: dict[str, PredictionBand] = {}
    for kind in ("decode", "prefill"):
        rows = [s for s in samples if s.kind == kind]
        if not rows:
            continue
        bands[kind] = band_of([s.log_ratio for s in rows])
        for backend in sorted({s.backend for s in rows}):
            mine = [s.log_ratio for s in rows if s.backend == backend]
            if len(mine) >= BAND_MIN_ROWS:
                bands[f"{kind}.{backend}"] = band_of(mine)
    return bands


def inside(sample: BandSample, bands: dict[str, PredictionBand]) -> bool:
    band = bands.get(f"{sample.kind}.{sample.backend}") or bands[sample.kind]
    return band.low <= sample.measured / sample.predicted <= band.high


def coverage(samples: Sequence[BandSample], bands: dict[str, PredictionBand]) -> float:
    return sum(inside(s, bands) for s in samples) / len(samples) if samples else float("nan")


def nested_coverage(samples: Sequence[BandSample], within: Callable[[BandSample], bool] = lambda s: True) -> float:
    """Share of held-out rows (those `within`) inside bands derived from the *other* folds' residuals only: the
    honest coverage on GPUs neither the fit nor the bands saw."""
    hits = total = 0
    for k in sorted({s.fold for s in samples}):
        bands = derive_bands([s for s in samples if s.fold != k])
        mine = [s for s in samples if s.fold == k and within(s)]
        hits += sum(inside(s, bands) for s in mine)
        total += len(mine)
    return hits / total if total else float("nan")


def holdout_stats(samples: Sequence[BandSample], bands: dict[str, PredictionBand]) -> dict[str, float | int]:
    """The headline leave-GPUs-out numbers (single-GPU dense tg128-tg1024 / pp512 rows, and multi-GPU decode) and
    how often measurements fall inside the bands."""
    stats: dict[str, float | int] = {}

    def record(prefix: str, subset: list[BandSample]) -> None:
        errs = [abs(s.predicted / s.measured - 1) for s in subset]
        stats[f"{prefix}_n"] = len(errs)
        stats[f"{prefix}_mape"] = round(sum(errs) / len(errs), 4) if errs else float("nan")

    headline = [s for s in samples if s.headline]
    for kind in ("decode", "prefill"):
        record(f"holdout_{kind}", [s for s in headline if s.kind == kind and s.devices == 1])
    record("holdout_multi_decode", [s for s in headline if s.kind == "decode" and s.devices > 1])
    stats["holdout_band_coverage"] = round(coverage(samples, bands), 4)
    stats["holdout_band_coverage_nested"] = round(nested_coverage(samples), 4)
    stats["holdout_band_coverage_nested_headline_single"] = round(
        nested_coverage(samples, lambda s: s.headline and s.devices == 1), 4)  # fmt: skip
    stats["holdout_rows"] = len(samples)
    return stats


RESIDUAL_COLUMNS = ("file", "line", "gpu", "backend", "model", "quant", "kind", "test", "devices", "era", "fold",
                    "headline", "measured", "predicted")  # fmt: skip


def read_residuals(path: Path) -> list[BandSample]:
    """The held-out residuals `write_residuals` wrote (the committed bench/calibration/holdout_residuals.csv)."""
    with path.open(newline="") as handle:
        return [
            BandSample(kind=r["kind"], backend=r["backend"], fold=int(r["fold"]), measured=float(r["measured"]),
                       predicted=float(r["predicted"]), headline=r["headline"] == "1", devices=int(r["devices"]))
            for r in csv.DictReader(handle)
        ]  # fmt: skip


def write_residuals(held: Sequence[HeldOut], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(RESIDUAL_COLUMNS)
        for h in held:
            r = h.row
            writer.writerow([h.file, r.line, gpu_of(r), r.backend, r.model.id, r.quant.id, r.kind,
                             f"{'tg' if r.kind == 'decode' else 'pp'}{r.tokens}", len(r.devices), r.engine.era or "",
                             h.fold, int(is_headline_row(r)), r.measured_tokens_per_s, round(h.predicted, 4)])  # fmt: skip


# ---------------------------------------------------------------------------------------------- the command


def _method(args: argparse.Namespace, rows: int, caution: int) -> str:
    eras = ", ".join(FITTED_ERAS)
    return (
        f"scipy.optimize.least_squares on log(predicted/measured) over {rows} rows of "
        f"{', '.join(p.name for p in args.csv)} (all mapped tgN/ppN rows, single-GPU rows weighted "
        f"{SINGLE_GPU_WEIGHT}; family compute factors with a log-prior of weight {FAMILY_PRIOR_WEIGHT} toward 1, family "
        f"bandwidth factors with one of the same weight toward their vendor's mean log factor (fit.VENDOR_FAMILIES), "
        f"which is itself pulled toward 1 with that weight; {caution} rows whose notes say 'treat with caution'/'anomalous' left out of the fit and of every "
        f"score, still listed by `gpumix validate`; per quant class ALU operations per weight for decode, a roofline "
        f"beside bytes/bandwidth, and for prefill, added to the matrix time against the FP32 ALU peak); each row predicted for the llama.cpp era of its own build "
        f"(gpumix.calibrate.engine_notes), era factors fitted for {eras} relative to '{GPUMIX_ERA}', the era of the "
        f"llama.cpp gpumix builds (b{GPUMIX_LLAMA_CPP.build}, {GPUMIX_LLAMA_CPP.commit}); fitted "
        f"{datetime.now(UTC).date().isoformat()} by `python -m gpumix.calibrate.fit "
        + " ".join(str(p) for p in args.csv) + (" --holdout" if args.holdout else "") + "`"
        + (f" (holdout_* = {HOLDOUT_FOLDS} folds by GPU model: fit without those GPUs, predict their rows; "
           "holdout_decode/prefill = single-GPU dense tg128-tg1024/pp512 rows)" if args.holdout else "")
        + "; CPU backend (not fitted here: ../shared/calibration has no CPU rows): bandwidth_efficiency = one cited "
        "llama.cpp CPU decode (Apple M1 CPU, 7B Q4_0, >= 53.3 of 68.25 GB/s theoretical, llama.cpp PR #1642, "
        "2023-06-04) divided by the fitted Q4_0 bandwidth factor; per-layer overhead and compute efficiency (with "
        "the per-thread cap speed.CPU_GB_PER_S_PER_THREAD) fitted to llama-bench -t 1 on this project's VM by "
        "bench/cpu/fit_cpu.py; see cpu_params in gpumix/calibrate/fit.py"
    )  # fmt: skip


def _band_method(held: Sequence[HeldOut]) -> str:
    return (
        f"10th/90th percentiles of measured/predicted over {len(held)} held-out rows (all tests, single and multi-GPU, "
        f"caution rows excluded) of the {HOLDOUT_FOLDS}-fold leave-GPU-models-out check; per kind, and per backend "
        f"where it has >= {BAND_MIN_ROWS} held-out rows (else the all-backend band); the residuals are in "
        "bench/calibration/holdout_residuals.csv. The decode upper bound is capped at bytes / peak bandwidth."
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv", nargs="+", type=Path)
    parser.add_argument("--holdout", action="store_true", help="also run the leave-GPUs-out check and derive the "
                        "prediction bands (5 more fits; ~25 min on 2 shared cores)")  # fmt: skip
    parser.add_argument("-o", "--output", type=Path, default=DATA_FILE)
    parser.add_argument("--residuals", type=Path, default=RESIDUALS_FILE, help="where --holdout writes its residuals")
    parser.add_argument("--max-nfev", type=int, default=None, help="cap optimizer evaluations (development only)")
    args = parser.parse_args(argv)
    per_file: dict[str, list[MappedRow]] = {path.name: map_file(path)[2] for path in args.csv}
    rows = [r for file_rows in per_file.values() for r in file_rows]
    print(f"fitting on {len(fit_set(rows))} rows ({len(rows) - len(fit_set(rows))} caution rows left out)", flush=True)
    x = fit_rows(rows, args.max_nfev)
    cal = calibration_from_vector(x)
    stats: dict[str, float | int | str] = {"rows_fitted": len(fit_set(rows))}
    for name, file_rows in per_file.items():
        headline = [r for r in file_rows if is_headline_row(r)]
        for kind in ("decode", "prefill"):
            n, err = mape(headline, cal, kind)
            stats[f"{name}:headline_{kind}_n"] = n
            stats[f"{name}:headline_{kind}_mape"] = round(err, 4)
    bands: dict[str, PredictionBand] = {}
    band_method = ""
    if args.holdout:
        held = holdout_predictions(per_file, fit=lambda r: fit_rows(r, args.max_nfev),
                                   progress=lambda s: print(s, flush=True))  # fmt: skip
        write_residuals(held, args.residuals)
        samples = read_residuals(args.residuals)  # the bands come from exactly what is committed
        bands = derive_bands(samples)
        band_method = _band_method(held)
        stats.update(holdout_stats(samples, bands))
    method = _method(args, len(fit_set(rows)), len(rows) - len(fit_set(rows)))
    cal = calibration_from_vector(x, method=method, stats=stats, bands=bands, band_method=band_method)
    payload = json.loads(cal.model_dump_json())
    payload["parameters"] = {name: round(float(v), 6) for name, v in zip(_NAMES, x, strict=True)}
    args.output.write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    main()
