"""Peak dense FP16 matrix throughput from a GPU's compute units and clock: for cards whose vendor publishes no FP16
tensor figure (Apple M-series, RTX PRO Blackwell, Quadro RTX, older Teslas...), so prefill has a compute peak on
every catalog GPU.

    peak = compute units (SMs / CUs / Xe cores / Apple GPU cores) × boost clock × dense FP16 FLOP per clock per unit

The FLOP-per-clock figure is a property of the architecture, from its whitepaper or ISA guide. On parts without FP16
matrix units whose FP16 rate is not above FP32 (Pascal GP102, Maxwell, Kepler; Apple GPUs run FP16 at the FP32 rate)
it is the FP32 FMA rate, which is what llama.cpp's kernels get there. The rule reproduces the published FP16 tensor
figure of every catalog card that has one within a few per cent (tests/hardware/test_compute.py), so it is used as
a *derived* figure (`GpuSpec.fp16_tflops_derived`, the catalog's `fp16_tflops_derived` column) where no published
figure exists. scripts/build_gpu_catalog.py fills that column with `derived_fp16_tflops`.
"""

from __future__ import annotations

import re

# (pattern on the catalog's arch text, dense FP16 FLOP per clock per compute unit, source). First match wins, so
# the specific dies (GA100) come before their family (Ampere).
FLOP_PER_CLOCK_PER_UNIT: tuple[tuple[str, int, str], ...] = (
    (r"GA100", 2048, "NVIDIA A100 whitepaper: 4 tensor cores/SM x 256 FP16 FMA/clock"),
    (r"GH1\d\d|Hopper", 4096, "NVIDIA H100 whitepaper: 4 tensor cores/SM x 512 FP16 FMA/clock (dense)"),
    (r"Volta", 1024, "NVIDIA V100 whitepaper: 8 tensor cores/SM x 64 FP16 FMA/clock"),
    (r"Turing", 1024, "NVIDIA Turing whitepaper: 8 tensor cores/SM x 64 FP16 FMA/clock"),
    (r"Ampere", 1024, "NVIDIA GA102 whitepaper: 4 tensor cores/SM x 128 dense FP16 FMA/clock (FP16 accumulate)"),
    (r"Ada", 1024, "NVIDIA Ada whitepaper: 4 tensor cores/SM x 128 dense FP16 FMA/clock (FP16 accumulate)"),
    (r"Blackwell", 1024, "NVIDIA RTX Blackwell whitepaper: 4 tensor cores/SM x 128 dense FP16 FMA/clock (FP16 acc.)"),
    (r"Pascal|Maxwell", 256, "no FP16 matrix units: FP32 rate, 128 CUDA cores/SM x 2 FLOP (FMA)"),
    (r"Kepler", 384, "no FP16 matrix units: FP32 rate, 192 CUDA cores/SMX x 2 FLOP (FMA)"),
    (r"RDNA 4", 1024, "AMD RDNA 4 ISA guide: WMMA, 1024 dense FP16 FLOP/clock per CU"),
    (r"RDNA 3", 512, "AMD RDNA 3 ISA guide: WMMA, 512 FP16 FLOP/clock per CU"),
    (r"RDNA [12]|GCN|Vega", 256, "packed FP16: 64 lanes/CU x 2 (FMA) x 2 (two FP16 per lane)"),
    (r"CDNA", 1024, "AMD CDNA/CDNA 2 whitepapers: matrix cores, 1024 FP16 FLOP/clock per CU"),
    (r"Xe2|Battlemage", 2048, "Intel Xe2: 8 XMX engines per Xe core x 256 FP16 FLOP/clock"),
    (r"Apple", 256, "Apple GPU core: 128 FP32 ALUs x 2 FLOP (FMA); FP16 runs at the FP32 rate"),
)  # fmt: skip


def flop_per_clock_per_unit(arch: str) -> tuple[int, str] | None:
    """(dense FP16 FLOP per clock per compute unit, source) for a catalog arch text, or None when unknown."""
    for pattern, flops, source in FLOP_PER_CLOCK_PER_UNIT:
        if re.search(pattern, arch, re.I):
            return flops, source
    return None


def derived_fp16_tflops(arch: str, compute_units: int, boost_clock_mhz: float) -> float | None:
    """Dense FP16 matrix TFLOPS from units × clock × FLOP/clock/unit, or None for an unknown architecture."""
    found = flop_per_clock_per_unit(arch)
    if found is None or compute_units <= 0 or boost_clock_mhz <= 0:
        return None
    return compute_units * boost_clock_mhz * 1e6 * found[0] / 1e12


# (pattern on the arch text, FP32 lanes per compute unit, source): the plain FP32 ALU rate = units x clock x lanes x
# 2 (FMA). Prefill's non-matrix work (dequantizing/scaling quantized blocks, norms, RoPE, softmax) runs on these ALUs,
# so a card whose tensor peak is many times its ALU peak (A100, A30, H100, MI210: 8-16x; GeForce: 4x) reaches a
# smaller share of its tensor peak. First match wins.
FP32_LANES_PER_UNIT: tuple[tuple[str, int, str], ...] = (
    (r"GA100", 64, "NVIDIA A100 whitepaper: 64 FP32 cores per SM"),
    (r"GH1\d\d|Hopper", 128, "NVIDIA H100 whitepaper: 128 FP32 cores per SM"),
    (r"Volta|Turing", 64, "NVIDIA V100 / Turing whitepapers: 64 FP32 cores per SM"),
    (r"Ampere|Ada|Blackwell", 128, "NVIDIA GA102 / Ada / RTX Blackwell whitepapers: 128 FP32 cores per SM"),
    (r"Pascal|Maxwell", 128, "NVIDIA GP102 / GM200 whitepapers: 128 CUDA cores per SM"),
    (r"Kepler", 192, "NVIDIA GK110/GK210 whitepaper: 192 CUDA cores per SMX"),
    (r"RDNA [34]", 128, "AMD RDNA 3/4: 64 stream processors per CU, dual-issue FP32 (AMD's TFLOPS figures count 128)"),
    (r"RDNA [12]|GCN|Vega|CDNA", 64, "AMD RDNA 1/2, GCN, CDNA ISA guides: 64 FP32 lanes per CU (CDNA 2's packed FP32 "
                                   "needs packed instructions ggml does not emit)"),
    (r"Xe2|Battlemage", 128, "Intel Xe2: 8 vector engines x 16 FP32 lanes per Xe core"),
    (r"Apple", 128, "Apple GPU core: 128 FP32 ALUs"),
)  # fmt: skip


def derived_fp32_tflops(arch: str, compute_units: int, boost_clock_mhz: float) -> float | None:
    """Plain FP32 ALU TFLOPS from units x clock x lanes x 2 (FMA), or None for an unknown architecture."""
    for pattern, lanes, _source in FP32_LANES_PER_UNIT:
        if re.search(pattern, arch, re.I):
            if compute_units <= 0 or boost_clock_mhz <= 0:
                return None
            return compute_units * boost_clock_mhz * 1e6 * lanes * 2 / 1e12
    return None
