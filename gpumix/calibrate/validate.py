"""Predict published llama.cpp measurements and report the error (`gpumix validate FILE.csv`).

The rows come from `gpumix.calibrate.measurements` (both CSV formats of ../shared/calibration); the calibration
to predict with is an argument (the CLI resolves `--calibration`). Each row is predicted for the llama.cpp era of
its own build when its notes give one (`era`, `build`), with its 80 % interval (`predicted_low`/`predicted_high`);
`interval_coverage` is the share of scored rows inside theirs. Rows whose notes flag them as anomalous ("treat with
caution") are listed (`caution: true`) but left out of every summary, as they are left out of the fit.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from gpumix.calibrate.measurements import is_headline_row, map_file, predict_row_band
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
    predicted_low: float | None = None  # the 80 % interval (None: the calibration has no bands)
    predicted_high: float | None = None
    inside: bool | None = None  # predicted_low <= measured <= predicted_high
    era: str | None = None  # llama.cpp era the row was predicted for (its build's); None = undated (gpumix's era)
    build: int | None = None  # llama.cpp build number from the notes
    caution: bool = False  # flagged anomalous in its notes: listed, not scored


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
    # Share of scored rows whose measurement lies inside their 80 % interval (None without bands). On the rows the
    # calibration was fitted on it runs above 80 %; on GPUs left out of the fit it is near 80 % (README).
    interval_coverage: float | None = None
    caution_rows: int = 0  # listed in results, left out of the summaries
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
        predicted, low, high = predict_row_band(row, cal)
        measured = row.measured_tokens_per_s
        results.append(
            RowResult(
                line=row.line, gpu=row.gpu_label, model=row.model.name, quant=row.quant.id,
                test=f"{'tg' if row.kind == 'decode' else 'pp'}{row.tokens}", kind=row.kind,
                measured=measured, predicted=predicted, error=predicted / measured - 1,
                predicted_low=low, predicted_high=high,
                inside=None if low is None or high is None else low <= measured <= high,
                era=row.engine.era, build=row.engine.build, caution=row.caution,
            )  # fmt: skip
        )
    scored = [r for r in results if not r.caution]
    banded = [r for r in scored if r.inside is not None]
    return ValidationReport(
        file=str(path),
        format=fmt,
        rows=n_rows,
        used=len(results),
        skipped=n_rows - len(results),
        skipped_reasons=dict(reasons),
        decode=_summary([r for r in scored if r.kind == "decode"]),
        prefill=_summary([r for r in scored if r.kind == "prefill"]),
        headline={
            kind: _summary([r for r in scored if r.kind == kind and r.line in headline_lines])
            for kind in ("decode", "prefill")
        },
        interval_coverage=sum(bool(r.inside) for r in banded) / len(banded) if banded else None,
        caution_rows=len(results) - len(scored),
        results=results,
    )


def _summary(results: list[RowResult]) -> MetricSummary:
    if not results:
        return MetricSummary(n=0, mape=None)
    return MetricSummary(n=len(results), mape=sum(abs(r.error) for r in results) / len(results))
