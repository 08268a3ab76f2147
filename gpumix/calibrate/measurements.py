"""Published llama.cpp measurements as rows the estimator can predict (shared by `validate` and `fit`).

Reads the exact formats of ../shared/calibration/measurements.csv (one GPU) and multigpu.csv (several), detected
by header, and maps each row through the GPU, model and quant catalogs. Rows that cannot be mapped are skipped with
a reason, never guessed. `predict_row` is what the estimator says for a row under a given `Calibration`.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from gpumix.calibrate.engine_notes import EngineInfo, engine_of_row
from gpumix.errors import GpumixError
from gpumix.estimate.calibration import Calibration
from gpumix.estimate.estimator import estimate
from gpumix.estimate.types import Placement, Workload
from gpumix.hardware.catalog import parse_device_list, resolve_gpu
from gpumix.hardware.devices import device_from_spec
from gpumix.hardware.spec import Device
from gpumix.kinds import PlacementMode
from gpumix.models.catalog import resolve_model, resolve_quant
from gpumix.models.spec import ModelSpec, QuantSpec

SINGLE_COLUMNS = ("source", "gpu", "backend", "model", "quant", "model_size_gb", "params_b", "test", "tokens_per_s")
MULTI_COLUMNS = ("source", "n_gpus", "gpus", "split_mode", "tensor_split", "backend", "model", "quant", "test",
                 "tokens_per_s")  # fmt: skip
_TEST = re.compile(r"^(tg|pp)(\d+)$")
# Architectures before Pascal lack the int8 dot-product instruction (dp4a, CC 6.1) that llama.cpp's quantized CUDA
# kernels are built on; their measured speeds come from fallback paths the bandwidth model does not describe.
_UNMODELLED_ARCH = re.compile(r"Kepler|Maxwell", re.I)


_UNKNOWN_MEMORY_BYTES = 2**50


@dataclass(frozen=True)
class MappedRow:
    line: int
    devices: tuple[Device, ...]
    backend: str
    model: ModelSpec
    quant: QuantSpec
    kind: str  # "decode" | "prefill"
    tokens: int
    measured_tokens_per_s: float
    gpu_label: str
    split_mode: str  # "single" | "layer_split" | "row"
    engine: EngineInfo  # the llama.cpp build/era, flags and caution mark from the row's notes

    @property
    def caution(self) -> bool:
        """The row's notes flag the number as anomalous: reported, never fitted or scored."""
        return self.engine.caution


def read_rows(path: Path) -> tuple[str, list[tuple[int, dict[str, str]]]]:
    """The CSV's format ("single"/"multi") and its rows with their line numbers."""
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            header = tuple(reader.fieldnames or ())
            rows = [(i + 2, row) for i, row in enumerate(reader)]
    except FileNotFoundError as exc:
        raise GpumixError(f"{path}: no such file") from exc
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise GpumixError(f"{path}: cannot read as CSV ({exc})") from exc
    if all(col in header for col in MULTI_COLUMNS):
        return "multi", rows
    if all(col in header for col in SINGLE_COLUMNS):
        return "single", rows
    expected = SINGLE_COLUMNS if "gpu" in header else MULTI_COLUMNS
    missing = [c for c in expected if c not in header]
    raise GpumixError(
        f"{path}: missing columns {', '.join(missing)}",
        hint="use the format of ../shared/calibration/measurements.csv or multigpu.csv",
    )


def map_row(line: int, row: dict[str, str], fmt: str) -> MappedRow | str:
    """A row resolved through the catalogs, or the reason it can't be."""
    match = _TEST.match((row.get("test") or "").strip())
    if not match:
        return "test is not a plain tgN/ppN"
    kind = "decode" if match.group(1) == "tg" else "prefill"
    try:
        measured = float(row["tokens_per_s"])
    except (TypeError, ValueError):
        return "tokens_per_s is not a number"
    try:
        model = resolve_model(row["model"])
    except GpumixError:
        return "model not in catalog"
    try:
        quant = resolve_quant(row["quant"])
    except GpumixError:
        return "quant not in catalog"
    split_mode = "single"
    try:
        if fmt == "multi":
            specs = parse_device_list(row["gpus"])
            mode = (row.get("split_mode") or "").lower()
            if mode.startswith("row"):
                return "row split mode not modelled"
            if "even" not in (row.get("tensor_split") or "even").lower():
                return "explicit tensor split not given as numbers"
            split_mode = "layer_split" if len(specs) > 1 else "single"
            label = row["gpus"]
        else:
            specs = [resolve_gpu(row["gpu"])]
            label = row["gpu"]
    except GpumixError:
        return "GPU not in catalog"
    if kind == "prefill" and any(not (s.matrix_tflops or s.kind == "cpu") for s in specs):
        return "no FP16/FP32 throughput for this GPU, published or derived (prefill needs one)"
    if any(_UNMODELLED_ARCH.search(s.arch) for s in specs):
        return "pre-Pascal GPU (no dp4a): llama.cpp fallback kernels not modelled"
    if all(s.vram_bytes > 0 for s in specs):
        weights = model.params_total * quant.bits_per_weight / 8
        if weights > sum(s.vram_bytes for s in specs) * 1.02:
            return "model larger than the GPUs' memory (offloaded run)"
    # The row was measured, so the model fitted; unified-memory parts (Apple) have no fixed VRAM in the catalog.
    devices = tuple(
        device_from_spec(spec, index=i, total_bytes=spec.vram_bytes or _UNKNOWN_MEMORY_BYTES)
        for i, spec in enumerate(specs)
    )
    return MappedRow(
        line=line, devices=devices, backend=(row.get("backend") or "CUDA").strip(), model=model, quant=quant,
        kind=kind, tokens=int(match.group(2)), measured_tokens_per_s=measured, gpu_label=label, split_mode=split_mode,
        engine=engine_of_row(row.get("notes") or "", row.get("source") or ""),
    )  # fmt: skip


def predict_row(row: MappedRow, calibration: Calibration) -> float:
    """Predicted tokens/s for a llama-bench test: tgN decodes N tokens from empty (mean depth N/2); ppN is one
    prompt of N tokens in ubatches of the row's -ub (512 by default). Predicted for the llama.cpp era of the row's
    build when its notes date it (`engine_notes`), else for the calibration's own era."""
    return _estimate_row(row, calibration)[0]


def predict_row_band(row: MappedRow, calibration: Calibration) -> tuple[float, float | None, float | None]:
    """(predicted, low, high): the prediction and its 80 % interval (None where the calibration has no bands)."""
    return _estimate_row(row, calibration)


def _estimate_row(row: MappedRow, calibration: Calibration) -> tuple[float, float | None, float | None]:
    mode: PlacementMode = "single" if len(row.devices) == 1 else "layer_split"
    placement = Placement(mode=mode, devices=row.devices)
    cal = calibration.at_era(row.engine.era)
    fa = row.engine.flash_attention is not False
    prompt = 512 if row.kind == "decode" else row.tokens
    workload = Workload(context=row.tokens, parallel=1, prompt_tokens=prompt, ubatch=row.engine.ubatch,
                        flash_attention=fa)  # fmt: skip
    result = estimate(row.model, row.quant, placement, workload, calibration=cal, backend=row.backend)
    if row.kind == "decode":
        return result.decode_tokens_per_s, result.decode_tokens_per_s_low, result.decode_tokens_per_s_high
    return result.prefill_tokens_per_s, result.prefill_tokens_per_s_low, result.prefill_tokens_per_s_high


def is_headline_row(row: MappedRow) -> bool:
    """The rows the issue's targets are stated on: dense models, tg128–tg1024 and pp512."""
    if row.model.is_moe:
        return False
    return (row.kind == "decode" and 128 <= row.tokens <= 1024) or (row.kind == "prefill" and row.tokens == 512)


def map_file(path: Path) -> tuple[str, int, list[MappedRow], Counter[str]]:
    fmt, rows = read_rows(path)
    mapped: list[MappedRow] = []
    reasons: Counter[str] = Counter()
    for line, row in rows:
        result = map_row(line, row, fmt)
        if isinstance(result, str):
            reasons[result] += 1
        else:
            mapped.append(result)
    return fmt, len(rows), mapped, reasons
