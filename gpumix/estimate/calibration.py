"""Efficiency parameters of the speed model, fitted on measured llama.cpp throughput (pure: no environment,
home directory or file reads beyond the packaged data/calibration.json).

Two layers:
- `Calibration` — a few physical parameters per backend (achieved fraction of peak bandwidth, per-layer launch
  overhead, achieved fraction of peak FLOP/s), per quant class and per memory technology, fitted by
  `gpumix.calibrate.fit` on ../shared/calibration/*.csv and stored in data/calibration.json with how they were fitted.
- Per-device measurements of *this machine* written by `gpumix tune`: where a device matches, its measured achieved
  bandwidth and per-token overhead replace the catalog peak × efficiency. Reading those files, and deciding which
  one applies (`--calibration`, $GPUMIX_CALIBRATION, ~/.config/gpumix/calibration.json), is the calibration
  stage's job (`gpumix.calibrate.files`); the core only receives a `Calibration`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import lru_cache
from importlib import resources
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gpumix.errors import GpumixError, first_validation_problem
from gpumix.estimate.eras import GPUMIX_ERA
from gpumix.hardware.spec import Device, GpuSpec

# Version of the fitted-calibration JSON (data/calibration.json, `python -m gpumix.calibrate.fit -o FILE`).
# 2: llama.cpp era factors (engine_era, era_decode_factor, era_prefill_factor) and prediction bands.
CALIBRATION_FORMAT_VERSION = 2


class BackendParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    bandwidth_efficiency: float  # achieved / peak memory bandwidth for float weights at batch 1
    per_layer_overhead_s: float  # kernel launches and syncs per layer per token
    compute_efficiency: float  # achieved / peak dense FP16 FLOP/s in prefill


class DeviceMeasurement(BaseModel):
    """This machine's measured numbers for one device (from `gpumix tune`)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    match: str
    achieved_bandwidth_gb_per_s: float
    per_token_overhead_s: float = 0.0
    prefill_tflops: float | None = None


class PredictionBand(BaseModel):
    """An 80 % prediction interval as multipliers on a predicted speed: the 10th and 90th percentiles of
    measured/predicted on GPUs left out of the fit (`gpumix.calibrate.fit --holdout`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    low: float = Field(gt=0)
    high: float = Field(gt=0)
    n: int = Field(ge=0)  # held-out rows the percentiles come from


class Calibration(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: int = CALIBRATION_FORMAT_VERSION
    method: str = ""
    fit_stats: dict[str, float | int | str] = Field(default_factory=dict)
    backends: dict[str, BackendParams]
    quant_bandwidth_factor: dict[str, float]  # float | q8 | quantized
    quant_compute_factor: dict[str, float]
    hbm_bandwidth_factor: float = 1.0  # HBM parts reach a lower fraction of peak at batch 1
    saturation_bandwidth_gb_per_s: float = 1e9  # kernel-level ceiling on achieved bandwidth
    fixed_overhead_s: float = 0.0  # per token, whole model (sampling, sync)
    link_latency_s: float = 30e-6  # per device boundary per token in a layer split
    arch_compute_factor: dict[str, float] = Field(default_factory=dict)  # prefill, per architecture family
    arch_bandwidth_factor: dict[str, float] = Field(default_factory=dict)  # decode, per architecture family
    # llama.cpp era the predictions are for (gpumix.estimate.eras; default: the era of the llama.cpp gpumix builds)
    # and each era's efficiency relative to the fit's reference era (decode: achieved bandwidth; prefill: FLOP/s).
    engine_era: str = GPUMIX_ERA
    era_decode_factor: dict[str, float] = Field(default_factory=dict)
    era_prefill_factor: dict[str, float] = Field(default_factory=dict)
    era_overhead_factor: dict[str, float] = Field(default_factory=dict)  # on the per-layer launch overhead
    # Decode's ALU roofline: operations per weight to unpack and multiply it, per quant class, against the device's
    # matrix peak (GpuSpec.matrix_tflops). Binding where FLOP/s per byte/s is low (Apple M-series, GCN): there a
    # k-quant decodes slower than its bytes allow. Empty = no ALU term.
    decode_ops_per_weight: dict[str, float] = Field(default_factory=dict)
    # Prefill's ALU term: operations per weight per prompt token on the plain FP32 ALUs (GpuSpec.alu_tflops), per
    # quant class, added to the matrix time. Empty = no ALU term.
    prefill_ops_per_weight: dict[str, float] = Field(default_factory=dict)
    # 80 % prediction intervals, keyed "decode" / "prefill" (all backends) or "decode.Metal" etc. where the held-out
    # rows of one backend are enough; how they were derived is in `band_method`.
    bands: dict[str, PredictionBand] = Field(default_factory=dict)
    band_method: str = ""
    measurements: tuple[DeviceMeasurement, ...] = ()  # from `gpumix tune`
    parameters: dict[str, float] = Field(default_factory=dict)  # the fitted vector, by name (for the record)

    def at_era(self, era: str | None) -> Calibration:
        """The same fit predicting for llama.cpp builds of `era` (None: unchanged)."""
        if era is None or era == self.engine_era:
            return self
        return self.model_copy(update={"engine_era": era})

    def era_factors(self) -> tuple[float, float, float]:
        """(decode bandwidth, prefill compute, per-layer overhead) factors of the era this calibration predicts for."""
        era = self.engine_era
        return (self.era_decode_factor.get(era, 1.0), self.era_prefill_factor.get(era, 1.0),
                self.era_overhead_factor.get(era, 1.0))  # fmt: skip

    def band(self, kind: str, backend: str | None) -> PredictionBand | None:
        """The 80 % band for `kind` ("decode" | "prefill") on `backend`, else the all-backend band, else None."""
        return self.bands.get(f"{kind}.{backend}") or self.bands.get(kind)

    def backend(self, name: str) -> BackendParams:
        return self.backends.get(name) or self.backends["CUDA"]

    def measurement_for(self, device: Device) -> DeviceMeasurement | None:
        keys = {device.spec.id.lower(), device.spec.name.lower()}
        for m in self.measurements:
            if m.match.lower() in keys:
                return m
        return None


def check_format_version(data: Mapping[str, Any], supported: int, where: str, hint: str) -> None:
    """A one-line error naming `where` and the field unless data's `format_version` is the one this gpumix reads."""
    if "format_version" not in data:
        raise GpumixError(f"{where}: missing field 'format_version' (this gpumix reads version {supported})", hint=hint)
    version = data["format_version"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise GpumixError(
            f"{where}: format_version {version!r} is not a version number (this gpumix reads {supported})", hint=hint
        )
    if version > supported:
        raise GpumixError(
            f"{where}: format_version {version} is newer than this gpumix reads ({supported})",
            hint=f"upgrade gpumix, or {hint}",
        )
    if version < supported:
        raise GpumixError(f"{where}: format_version {version} is older than this gpumix reads ({supported})", hint=hint)


def calibration_from_json(data: Any, where: str, hint: str) -> Calibration:
    """A fitted calibration from parsed JSON, its format_version checked; errors name `where` and the field."""
    if not isinstance(data, dict):
        raise GpumixError(f"{where}: not a calibration (a JSON object with 'backends')", hint=hint)
    check_format_version(data, CALIBRATION_FORMAT_VERSION, where, hint)
    try:
        return Calibration.model_validate(data)
    except ValidationError as exc:
        field, message = first_validation_problem(exc)
        raise GpumixError(f"{where}: field '{field}': {message}", hint=hint) from None


@lru_cache(maxsize=1)
def default_calibration() -> Calibration:
    """The fitted parameters shipped with gpumix (gpumix/estimate/data/calibration.json), no machine measurements."""
    text = resources.files("gpumix.estimate").joinpath("data/calibration.json").read_text()
    where = "gpumix/estimate/data/calibration.json (packaged)"
    return calibration_from_json(json.loads(text), where, "reinstall gpumix; the packaged calibration is damaged")


# Memory technology decides how much of the peak bandwidth single-stream kernels reach. Derived from the
# catalog's architecture string (the die name): HBM dies are GA100, GH100, GH200, GV100, GP100, GB100 and
# AMD's Vega 20 / CDNA parts; Apple silicon and GB10 use unified LPDDR.
_HBM = re.compile(r"GA100|GH1\d\d|GV100|GP100|GB1\d\d|Vega 20|CDNA|Instinct|Hopper|A100|H100|H200|MI\d", re.I)
_UNIFIED = re.compile(r"Apple|GB10\b|M\d (Pro|Max|Ultra)?", re.I)


@lru_cache(maxsize=256)  # a pure function of a frozen catalog row; the fit calls it per row per step
def memory_technology(spec: GpuSpec) -> str:
    if spec.kind == "cpu":
        return "dram"
    text = f"{spec.arch} {spec.name}"
    if _HBM.search(text):
        return "hbm"
    if _UNIFIED.search(text):
        return "unified"
    return "gddr"


@lru_cache(maxsize=256)  # a pure function of a frozen catalog row; the fit calls it per row per step
def default_backend(spec: GpuSpec) -> str:
    if spec.kind == "cpu":
        return "CPU"
    vendor = spec.vendor.lower()
    if "apple" in vendor or spec.name.lower().startswith("apple"):
        return "Metal"
    if vendor in ("amd", "ati") or "radeon" in spec.name.lower() or "instinct" in spec.name.lower():
        return "ROCm"
    return "CUDA"


# llama.cpp's "legacy" quants: 32-weight blocks with one scale (and a minimum for _1), dequantized with fewer
# operations per byte than the 256-weight k-quant super-blocks with 6-bit sub-block scales.
LEGACY_QUANTS = ("q4_0", "q4_1", "q5_0", "q5_1")


def quant_class(quant_id: str) -> str:
    q = quant_id.lower()
    if q in ("f32", "f16", "bf16"):
        return "float"
    if q in ("q8_0", "fp8", "int8"):
        return "q8"
    if q in LEGACY_QUANTS:
        return "legacy"
    return "quantized"


def quant_factor(factors: Mapping[str, float], quant_id: str) -> float:
    """A quant class's factor; a calibration without a "legacy" factor uses its "quantized" one for legacy quants."""
    cls = quant_class(quant_id)
    if cls == "legacy" and cls not in factors:
        cls = "quantized"
    return factors.get(cls, 1.0)


_ARCH_FAMILIES = ("Kepler", "Maxwell", "Pascal", "Volta", "Turing", "Ampere", "Ada", "Hopper", "Blackwell",
                  "RDNA", "CDNA", "GCN", "Apple", "Xe")  # fmt: skip


@lru_cache(maxsize=256)  # a pure function of a frozen catalog row; the fit calls it per row per step
def arch_family(spec: GpuSpec) -> str:
    text = f"{spec.arch} {spec.name}"
    for family in _ARCH_FAMILIES:
        if family.lower() in text.lower():
            return family
    if "vega" in text.lower():
        return "GCN"
    return "other"
