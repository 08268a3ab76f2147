"""Derived compute: every catalog GPU gets a prefill compute peak, and the rule that derives it reproduces the
published figures of the cards that have one (issue 13)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from gpumix.hardware.catalog import all_gpus, resolve_gpu
from gpumix.hardware.compute import derived_fp16_tflops, derived_fp32_tflops, flop_per_clock_per_unit

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT.parent / "shared" / "reference" / "gpus.csv"


def test_every_catalog_gpu_has_a_compute_peak() -> None:
    for gpu in all_gpus():
        assert gpu.matrix_tflops and gpu.matrix_tflops > 0, gpu.name
        assert gpu.compute_units and gpu.boost_clock_mhz and gpu.fp16_tflops_derived, gpu.name
        assert "fp16_tflops_derived = " in gpu.source  # the derivation is cited in the row


def test_the_rule_reproduces_every_published_fp16_figure() -> None:
    """The derived value is close for cards that have both: within 1.5 % for each of the ~55 such cards."""
    checked = 0
    for gpu in all_gpus():
        if gpu.fp16_tflops:
            assert gpu.fp16_tflops_derived == pytest.approx(gpu.fp16_tflops, rel=0.015), gpu.name
            checked += 1
    assert checked >= 50


def test_apple_rule_matches_apples_own_fp32_figures() -> None:
    """Apple publishes FP32 only (FP16 runs at the same rate): cores × 128 ALUs × 2 × clock vs Apple's figure."""
    apple_figures = [g for g in all_gpus() if g.vendor == "Apple" and "Apple Newsroom launch release" in g.source]
    assert len(apple_figures) >= 5
    for gpu in apple_figures:
        assert gpu.fp16_tflops_derived == pytest.approx(gpu.fp32_tflops, rel=0.01), gpu.name


@pytest.mark.parametrize(
    ("name", "expected"),
    [("Quadro RTX 6000", 130.5), ("RTX PRO 6000 Blackwell", 503.8), ("DGX Spark (GB10)", 123.9),
     ("Radeon AI PRO R9700", 191.4), ("Tesla P40", 11.76)],
)  # fmt: skip
def test_cards_without_a_published_figure_are_derived_and_flagged(name: str, expected: float) -> None:
    gpu = resolve_gpu(name)
    assert gpu.fp16_tflops is None and gpu.fp32_tflops is None
    assert gpu.matrix_tflops == pytest.approx(expected, rel=0.002) and gpu.matrix_tflops_derived


def test_published_figures_win_over_derived_ones() -> None:
    rtx3070 = resolve_gpu("RTX 3070")  # published 81.49, derived 81.25
    assert rtx3070.matrix_tflops == 81.49 and not rtx3070.matrix_tflops_derived
    m2 = resolve_gpu("Apple M2 Max (30-core GPU)")  # FP32 column (scaled from Apple's figure) before the derived one
    assert m2.matrix_tflops == m2.fp32_tflops and not m2.matrix_tflops_derived


def test_rule_pieces() -> None:
    assert flop_per_clock_per_unit("Ampere (GA100)") == (2048, flop_per_clock_per_unit("GA100")[1])  # type: ignore[index]
    assert flop_per_clock_per_unit("Ampere (GA102)")[0] == 1024  # type: ignore[index]
    assert flop_per_clock_per_unit("Some Future Arch") is None
    assert derived_fp16_tflops("Ada Lovelace (AD102)", 128, 2520) == pytest.approx(330.3, rel=1e-3)  # RTX 4090
    assert derived_fp16_tflops("Unknown", 10, 1000) is None and derived_fp16_tflops("Ada", 0, 1000) is None


@pytest.mark.skipif(not REFERENCE.is_file(), reason="../shared/reference/gpus.csv absent")
def test_build_script_reproduces_the_committed_catalog_byte_for_byte(tmp_path: Path) -> None:
    out = tmp_path / "gpus.csv"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "build_gpu_catalog.py"), "--reference", str(REFERENCE),
                    "--out", str(out)], check=True, capture_output=True, timeout=120)  # fmt: skip
    committed = ROOT / "gpumix" / "hardware" / "data" / "gpus.csv"
    assert out.read_bytes() == committed.read_bytes()
    assert re.search(r"^# compute_units .* fp16_tflops_derived", committed.read_text(), re.M)


@pytest.mark.parametrize(
    ("name", "published_fp32_tflops"),
    # Vendor FP32 figures (NVIDIA A30 / RTX 3090 / RTX 4090 spec pages, AMD MI210 and RX 7900 XTX spec pages, Intel
    # Arc B580 spec page). H100 PCIe is checked at the catalog's 1620 MHz (NVIDIA's 51.2 uses 1755 MHz).
    [("A30", 10.3), ("RTX 3090", 35.6), ("RTX 4090", 82.6), ("Instinct MI210", 22.6), ("Radeon RX 7900 XTX", 61.4),
     ("Arc B580", 13.7), ("H100 PCIe 80GB", 47.3)],
)  # fmt: skip
def test_derived_alu_rate_matches_the_vendors_fp32_figure(name: str, published_fp32_tflops: float) -> None:
    assert resolve_gpu(name).alu_tflops == pytest.approx(published_fp32_tflops, rel=0.01)


def test_every_catalog_gpu_has_an_alu_rate_and_apple_uses_its_published_one() -> None:
    for gpu in all_gpus():
        if gpu.kind == "gpu":
            assert gpu.alu_tflops and 0 < gpu.alu_tflops <= gpu.matrix_tflops * 1.01, gpu.name  # type: ignore[operator]
    m1 = resolve_gpu("Apple M1 Max (32-core GPU)")
    assert m1.alu_tflops == m1.fp32_tflops
    assert derived_fp32_tflops("Unknown", 10, 1000) is None
