"""Predict published llama.cpp measurements and report the error (`gpumix validate FILE.csv`).

The rows come from `gpumix.calibrate.measurements` (both CSV formats of ../shared/calibration); the calibration
to predict with is an argument (the CLI resolves `--calibration`).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from gpumix.calibrate.measurements import is_headline_row, map_file, predict_row
from gpumix.estimate.calibration import Calibration, default_calibration


class RowResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    line: int
    gpu: str
    model: str
    quant: str
    test: str
    kind: str
    measured: float
    predicted: float
    error: float  # predicted/measured - 1


class MetricSummary(BaseModel):
    model_config = ConfigDict(frozen=True)

    n: int
    mape: float | None


class ValidationReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    file: str
    format: str  # "single" | "multi"
    rows: int
    used: int
    skipped: int
    skipped_reasons: dict[str, int]
    decode: MetricSummary
    prefill: MetricSummary
    # The subset the estimator's targets are stated on: dense models, tg128–tg1024 and pp512.
    headline: dict[str, MetricSummary]
    results: list[RowResult]


def validate_file(path: Path, calibration: Calibration | None = None, headline_only: bool = False) -> ValidationReport:
    cal = calibration or default_calibration()
    fmt, n_rows, mapped, reasons = map_file(path)
    if headline_only:
        kept = [m for m in mapped if is_headline_row(m)]
        reasons["outside dense tg128-tg1024/pp512 (--headline)"] += len(mapped) - len(kept)
        mapped = kept
    results: list[RowResult] = []
    headline_lines = {m.line for m in mapped if is_headline_row(m)}
    for row in mapped:
        predicted = predict_row(row, cal)
        results.append(
            RowResult(
                line=row.line, gpu=row.gpu_label, model=row.model.name, quant=row.quant.id,
                test=f"{'tg' if row.kind == 'decode' else 'pp'}{row.tokens}", kind=row.kind,
                measured=row.measured_tokens_per_s, predicted=predicted,
                error=predicted / row.measured_tokens_per_s - 1,
            )  # fmt: skip
        )
    return ValidationReport(
        file=str(path),
        format=fmt,
        rows=n_rows,
        used=len(results),
        skipped=n_rows - len(results),
        skipped_reasons=dict(reasons),
        decode=_summary([r for r in results if r.kind == "decode"]),
        prefill=_summary([r for r in results if r.kind == "prefill"]),
        headline={
            kind: _summary([r for r in results if r.kind == kind and r.line in headline_lines])
            for kind in ("decode", "prefill")
        },
        results=results,
    )


def _summary(results: list[RowResult]) -> MetricSummary:
    if not results:
        return MetricSummary(n=0, mape=None)
    return MetricSummary(n=len(results), mape=sum(abs(r.error) for r in results) / len(results))
