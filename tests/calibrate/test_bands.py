"""The 80 % prediction bands: derived from the committed leave-GPUs-out residuals, and honest on them (issue 13)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpumix.calibrate.fit import (
    BAND_MIN_ROWS,
    RESIDUALS_FILE,
    BandSample,
    coverage,
    derive_bands,
    holdout_stats,
    nested_coverage,
    read_residuals,
)
from gpumix.estimate.calibration import default_calibration

ROOT = Path(__file__).resolve().parents[2]


def test_residuals_are_committed_where_the_fit_writes_them() -> None:
    assert RESIDUALS_FILE == ROOT / "bench" / "calibration" / "holdout_residuals.csv"
    samples = read_residuals(RESIDUALS_FILE)
    cal = default_calibration()
    assert len(samples) == cal.fit_stats["holdout_rows"]
    assert {s.fold for s in samples} == {0, 1, 2, 3, 4}


def test_packaged_bands_are_exactly_the_ones_the_committed_residuals_give() -> None:
    cal = default_calibration()
    assert derive_bands(read_residuals(RESIDUALS_FILE)) == cal.bands
    assert all(b.low < 1 < b.high for b in cal.bands.values())
    assert all(b.n >= BAND_MIN_ROWS for key, b in cal.bands.items() if "." in key)


def test_bands_cover_about_80_percent_of_left_out_rows() -> None:
    """On the held-out rows: the bands' own coverage, and the nested one (each fold's coverage with bands from the
    other folds only, i.e. on GPUs neither the fit nor the bands saw) both within 70-90 %."""
    samples = read_residuals(RESIDUALS_FILE)
    cal = default_calibration()
    assert 0.78 <= coverage(samples, cal.bands) <= 0.82  # percentiles of these very rows: ~80 % by construction
    nested = nested_coverage(samples)
    assert 0.70 <= nested <= 0.90
    headline = nested_coverage(samples, lambda s: s.headline and s.devices == 1)
    assert 0.70 <= headline <= 0.90
    assert cal.fit_stats["holdout_band_coverage_nested"] == pytest.approx(nested, abs=1e-4)


def test_recorded_holdout_accuracy_is_what_the_residuals_say() -> None:
    stats = holdout_stats(read_residuals(RESIDUALS_FILE), default_calibration().bands)
    recorded = default_calibration().fit_stats
    for key in ("holdout_decode_mape", "holdout_prefill_mape", "holdout_multi_decode_mape", "holdout_decode_n"):
        assert stats[key] == pytest.approx(recorded[key], abs=1e-4), key


def test_a_band_needs_enough_rows_of_its_backend() -> None:
    samples = [BandSample("decode", "CUDA", i % 5, 100.0, 100.0 * (0.8 + 0.01 * i)) for i in range(40)]
    samples += [BandSample("decode", "Metal", i % 5, 100.0, 90.0) for i in range(BAND_MIN_ROWS - 1)]
    bands = derive_bands(samples)
    assert "decode.CUDA" in bands and "decode.Metal" not in bands and bands["decode"].n == 40 + BAND_MIN_ROWS - 1
    low, high = bands["decode.CUDA"].low, bands["decode.CUDA"].high
    assert low < high and sum(low <= s.measured / s.predicted <= high for s in samples[:40]) / 40 == pytest.approx(
        0.8, abs=0.05)
