"""`gpumix validate` on the published measurements: the estimator's headline accuracy and its error handling."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gpumix.calibrate.validate import validate_file
from gpumix.errors import GpumixError

SHARED = Path(__file__).resolve().parents[3] / "shared" / "calibration"
SINGLE = SHARED / "measurements.csv"
MULTI = SHARED / "multigpu.csv"
needs_shared = pytest.mark.skipif(not SINGLE.is_file(), reason="../shared/calibration not present beside the repo")


@needs_shared
def test_headline_accuracy_on_published_single_gpu_measurements():
    """Issue #2's bar: decode MAPE <= 10% (dense, tg128-tg1024), prefill <= 20% (pp512), >= 90% of rows used."""
    report = validate_file(SINGLE, headline_only=True)
    headline_rows = report.used + sum(
        n for reason, n in report.skipped_reasons.items() if not reason.startswith(("outside", "model not", "test is"))
    )
    assert report.used / headline_rows >= 0.90, report.skipped_reasons
    assert report.decode.n >= 100 and report.decode.mape <= 0.10
    assert report.prefill.n >= 70 and report.prefill.mape <= 0.20
    # The plain report (all rows) carries the same headline subset.
    full = validate_file(SINGLE)
    assert full.headline["decode"] == report.decode and full.headline["prefill"] == report.prefill


@needs_shared
def test_multi_gpu_file_is_detected_and_predicted():
    report = validate_file(MULTI)
    assert report.format == "multi"
    assert report.used > 200
    assert report.decode.mape is not None and report.decode.mape < 0.35
    assert report.prefill.n > 100
    # Every skipped row has a stated reason; none is silently dropped.
    assert sum(report.skipped_reasons.values()) == report.skipped


def test_csv_with_missing_columns_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("gpu,model,test\nRTX 3090,Llama 3 8B,tg128\n")
    with pytest.raises(GpumixError, match="missing columns"):
        validate_file(bad)


def test_unmappable_rows_are_skipped_with_reasons_not_guessed(tmp_path):
    csv = tmp_path / "m.csv"
    header = "source,gpu,backend,model,quant,model_size_gb,params_b,test,tokens_per_s,notes\n"
    rows = [
        "s,RTX 3090,CUDA,Llama 3 8B,Q4_K_M,4.9,8.03,tg128,120,",
        "s,RTX 9999 Imaginary,CUDA,Llama 3 8B,Q4_K_M,4.9,8.03,tg128,120,",
        "s,RTX 3090,CUDA,Some Unknown Model 9B,Q4_K_M,4.9,9,tg128,120,",
        "s,RTX 3090,CUDA,Llama 3 8B,Q4_K_M,4.9,8.03,pp512+tg128,120,",
    ]
    csv.write_text(header + "\n".join(rows) + "\n")
    report = validate_file(csv)
    assert (report.rows, report.used, report.skipped) == (4, 1, 3)
    assert report.skipped_reasons == {
        "GPU not in catalog": 1,
        "model not in catalog": 1,
        "test is not a plain tgN/ppN": 1,
    }
    row = report.results[0]
    assert row.kind == "decode" and row.predicted > 0 and row.error == pytest.approx(row.predicted / 120 - 1)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpumix", *args], capture_output=True, text=True, timeout=120)


@needs_shared
def test_validate_cli_json_shape():
    out = _cli("validate", str(SINGLE), "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    for key in ("rows", "used", "skipped", "skipped_reasons", "decode", "prefill"):
        assert key in data
    assert data["rows"] == data["used"] + data["skipped"]
    assert 0 < data["decode"]["mape"] < 1 and data["decode"]["n"] > 0
    # Issue 13: each row's 80 % interval and era, and the share of measured rows inside their interval.
    rows = data["results"]
    assert all(r["predicted_low"] <= r["predicted_high"] for r in rows)
    assert all(r["inside"] == (r["predicted_low"] <= r["measured"] <= r["predicted_high"]) for r in rows)
    scored = [r for r in rows if not r["caution"]]
    assert data["interval_coverage"] == pytest.approx(sum(r["inside"] for r in scored) / len(scored))
    assert 0.7 <= data["interval_coverage"] <= 0.97  # in-sample: at or above the 80 % it has on unseen GPUs
    assert {r["era"] for r in rows} == {"2023", "2024-H1", "mmq"}
    assert any(r["build"] == 2824 for r in rows)


@needs_shared
def test_caution_rows_are_listed_but_not_scored():
    """The rows whose notes say "treat with caution" are left out of the fit and of the summaries, not dropped."""
    report = validate_file(SINGLE)
    flagged = [r for r in report.results if r.caution]
    assert report.caution_rows == len(flagged) == 4  # M1 8GB: the >= 2048-token tests its notes doubt
    assert {r.test for r in flagged} == {"pp2048", "pp4096", "tg2048", "tg4096"}
    scored_decode = [r for r in report.results if r.kind == "decode" and not r.caution]
    assert report.decode.n == len(scored_decode)
    multi = validate_file(MULTI)
    assert multi.caution_rows == 4 and {r.gpu for r in multi.results if r.caution} == {"4x RTX 5000 Ada"}


@needs_shared
def test_each_row_is_predicted_for_its_own_builds_era():
    """A 2024 build is predicted with the 2024 era factors; the same row as if built by gpumix's llama.cpp differs by
    exactly those factors' effect (decode: the bandwidth term only)."""
    from gpumix.calibrate.measurements import map_file, predict_row
    from gpumix.estimate.calibration import default_calibration

    cal = default_calibration()
    row = next(r for r in map_file(SINGLE)[2] if r.engine.build == 2824 and r.kind == "prefill")
    own = predict_row(row, cal)
    as_new = predict_row(row.__class__(**{**row.__dict__, "engine": row.engine.__class__(
        **{**row.engine.__dict__, "era": None})}), cal)  # fmt: skip
    assert own != pytest.approx(as_new)
    assert (own < as_new) == (cal.era_prefill_factor["2024-H1"] < 1)


def test_validate_cli_missing_file_is_one_line_error(tmp_path):
    out = _cli("validate", str(tmp_path / "nope.csv"))
    assert out.returncode != 0
    assert "Traceback" not in out.stderr and "no such file" in out.stderr
