"""Speed: decode is memory-bound, prefill compute-bound (VISION.md, "The physics").

One token of decode on a device costs (bytes it reads ÷ its achieved bandwidth) + a per-layer launch overhead;
a layer split adds the devices' times and a link hop per boundary. Achieved bandwidth is the catalog peak ×
fitted efficiencies (never above 1), so no prediction beats bytes ÷ peak bandwidth.
"""

from __future__ import annotations

from functools import lru_cache

from gpumix.estimate.calibration import (
    Calibration,
    arch_family,
    default_backend,
    memory_technology,
    quant_factor,
)
from gpumix.estimate.memory import (
    active_fraction,
    kv_bytes_per_element,
    layer_params,
    layer_weight_bytes,
    output_weight_bytes,
)
from gpumix.estimate.types import Links, Workload
from gpumix.hardware.spec import Device, GpuSpec
from gpumix.models.spec import ModelSpec, QuantSpec

GB = 1e9
# PCIe payload bandwidth per lane per direction in GB/s after encoding (PCI-SIG: Gen3 8 GT/s 128b/130b ≈ 0.985,
# Gen4 16 GT/s ≈ 1.969, Gen5 32 GT/s ≈ 3.938; Gen2 5 GT/s 8b/10b = 0.5, Gen1 0.25).
PCIE_GB_PER_S_PER_LANE = {1: 0.25, 2: 0.5, 3: 0.985, 4: 1.969, 5: 3.938, 6: 7.563}
# Latency of one small all-reduce step over PCIe through the host bridge (NCCL ring, 2 GPUs): ~10-20 µs
# (NCCL tests' small-message latency on PCIe Gen4 systems). NVLink: ~5 µs.
ALLREDUCE_LATENCY_PCIE_S = 15e-6
ALLREDUCE_LATENCY_NVLINK_S = 5e-6
# Cross-socket (SYS) traffic goes over the CPU interconnect: NCCL falls back to staging through host memory.
SYS_TOPOLOGY_PENALTY = 2.0
# CPU FP32 FMA throughput when the catalog has none: cores × 2.5 GHz × 32 FLOP/cycle (AVX2: 2 FMA units × 8 lanes ×
# 2 FLOP). Intel/AMD optimisation manuals give 2 × 256-bit FMA per cycle on Haswell+ / Zen 2+. Prefill reaches the
# CPU backend's fitted compute_efficiency of it (gpumix/calibrate/fit.py).
CPU_FLOP_PER_CORE_PER_S = 2.5e9 * 32
# One core streams quantized weights through its dot-product kernels at far below RAM bandwidth, so CPU decode is
# capped at threads x this (and at RAM bandwidth x the CPU fraction: the min() in achieved_bandwidth_gb_per_s).
# Fitted 2026-11-29 with the CPU backend's per_layer_overhead_s and compute_efficiency (gpumix/calibrate/fit.py) by
# bench/cpu/fit_cpu.py: scipy least squares on log(predicted / measured) over 8 models (SmolLM2 135M Q4_1, Gemma 3
# 270M Q4_K_M, synthetic Q4_K_M Qwen 2.5 0.5B, Qwen3 0.6B, TinyLlama 1.1B, Llama 3.2 1B, Gemma 3 1B, Granite 3.0
# 1B-A400M) x {llama-bench tg64, pp128} at -t 1 -ngl 0, the fastest sample of bench/cpu/results/cpu-2026-11-29T*.json
# (least contended: the VM is shared), on this project's VM (AMD EPYC, 2 cores, AVX2/FMA/F16C), llama.cpp 0.5.0-dev
# commit 0c1e570; output in bench/cpu/fit_cpu.json (14.57 GB/s). It replaces 5.3 GB/s (one load-affected Gemma 3
# 270M decode). Other CPUs stream at other rates: `gpumix tune` measures the device and replaces this.
CPU_GB_PER_S_PER_THREAD = 14.6


def backend_for(device: Device, workload: Workload, backend: str | None = None) -> str:
    return backend or default_backend(device.spec)


def achieved_bandwidth_gb_per_s(
    device: Device, quant: QuantSpec, calibration: Calibration, backend: str | None = None
) -> float:
    """Bandwidth a single decode stream reaches on this device: peak × fitted efficiencies, or tune's measurement."""
    measured = calibration.measurement_for(device)
    if measured is not None:
        return measured.achieved_bandwidth_gb_per_s
    params = calibration.backend(backend or default_backend(device.spec))
    eff = params.bandwidth_efficiency * quant_factor(calibration.quant_bandwidth_factor, quant.id)
    if memory_technology(device.spec) == "hbm":
        eff *= calibration.hbm_bandwidth_factor
    eff *= calibration.arch_bandwidth_factor.get(arch_family(device.spec), 1.0)
    eff *= calibration.era_factors()[0]
    eff = min(eff, 1.0)
    bw = device.spec.mem_bandwidth_gb_per_s * eff
    if device.kind == "cpu":
        bw = min(bw, (device.threads or 1) * CPU_GB_PER_S_PER_THREAD)
    return 1.0 / (1.0 / bw + 1.0 / calibration.saturation_bandwidth_gb_per_s)


def peak_bandwidth_gb_per_s(device: Device, calibration: Calibration) -> float:
    measured = calibration.measurement_for(device)
    peak = device.spec.mem_bandwidth_gb_per_s
    return max(peak, measured.achieved_bandwidth_gb_per_s) if measured else peak


def per_layer_overhead_s(device: Device, calibration: Calibration, backend: str | None = None) -> float:
    if calibration.measurement_for(device) is not None:
        return 0.0  # tune measures the device's whole overhead per token instead
    params = calibration.backend(backend or default_backend(device.spec))
    return params.per_layer_overhead_s * calibration.era_factors()[2]


def device_fixed_overhead_s(
    device: Device, n_layers_on_device: int, workload: Workload, calibration: Calibration, backend: str | None = None
) -> float:
    """Per-token time on a device that does not scale with bytes: kernel launches per layer, or tune's measurement."""
    if n_layers_on_device <= 0:
        return 0.0
    measured = calibration.measurement_for(device)
    if measured is not None:
        return measured.per_token_overhead_s
    return n_layers_on_device * per_layer_overhead_s(device, calibration, backend)


def kv_read_bytes(model: ModelSpec, workload: Workload, depth_tokens: float, layer_ids: list[int]) -> float:
    """K and V bytes attention reads for one token at this context depth over `layer_ids`: every layer reads its
    cache up to the depth, a sliding-window layer at most its window. Counted per layer kind (not per layer):
    the planner and the fit call this for every candidate placement."""
    if depth_tokens <= 0 or not layer_ids:
        return 0.0
    per_token = model.n_kv_heads * model.head_dim * 2 * kv_bytes_per_element(workload.kv_cache_dtype)
    flags = model.swa_layers
    n_swa = sum(1 for i in layer_ids if i < len(flags) and flags[i]) if flags else 0
    window = min(depth_tokens, model.sliding_window) if model.sliding_window else depth_tokens
    return per_token * (depth_tokens * (len(layer_ids) - n_swa) + window * n_swa)


def decode_bytes_on_device(
    model: ModelSpec, quant: QuantSpec, layer_ids: list[int], holds_output: bool, workload: Workload, depth: float
) -> float:
    """Bytes a device reads per decode token: its layers' (active) weights, their KV, and the output matrix."""
    layer_bytes = layer_weight_bytes(model, quant)
    frac = active_fraction(model)
    weights = sum(layer_bytes[i] for i in layer_ids) * frac
    kv = kv_read_bytes(model, workload, depth, layer_ids)
    out = output_weight_bytes(model, quant) if holds_output else 0
    return weights + kv + out


def decode_alu_s(
    model: ModelSpec, quant: QuantSpec, device: Device, layer_ids: list[int], holds_output: bool,
    calibration: Calibration,
) -> float:
    """Time the device's ALUs need per decode step to unpack and multiply the weights it reads: weights × fitted
    operations per weight (per quant class) ÷ its matrix peak × the era's decode efficiency. The step takes the
    longer of this and bytes ÷ bandwidth (a roofline); 0 without the calibration term, on a CPU, or for a device
    `gpumix tune` measured (its measured speed already includes it)."""
    ops = quant_factor(calibration.decode_ops_per_weight, quant.id) if calibration.decode_ops_per_weight else 0.0
    if not ops or device.kind == "cpu" or calibration.measurement_for(device) is not None:
        return 0.0
    weights = layer_params(model) * len(layer_ids) * active_fraction(model)
    if holds_output:
        weights += model.vocab_size * model.hidden_size
    spec = device.spec
    peak_tflops = spec.matrix_tflops or spec.mem_bandwidth_gb_per_s * family_flop_per_byte(spec) / 1000
    return weights * ops / (peak_tflops * 1e12 * calibration.era_factors()[0])


def prefill_alu_s(
    weights: float, tokens: int, quant: QuantSpec, device: Device, calibration: Calibration
) -> float:
    """Time the device's plain FP32 ALUs spend on prefill's non-matrix work for `weights` weights over `tokens`
    prompt tokens: weights x tokens x fitted operations per weight (per quant class) / (ALU peak x the era's prefill
    efficiency). Added to the matrix time; 0 without the calibration term, on a CPU, for a device `gpumix tune`
    measured, or for a card with no ALU figure (published or derived)."""
    ops = quant_factor(calibration.prefill_ops_per_weight, quant.id) if calibration.prefill_ops_per_weight else 0.0
    alu_tflops = device.spec.alu_tflops
    if not ops or not alu_tflops or device.kind == "cpu" or calibration.measurement_for(device) is not None:
        return 0.0
    return weights * tokens * ops / (alu_tflops * 1e12 * calibration.era_factors()[1])


def achieved_flops(device: Device, quant: QuantSpec, calibration: Calibration, backend: str | None = None) -> float:
    """FLOP/s prefill reaches: peak dense FP16 tensor (FP32 where no tensor figure, units × clock where neither is
    published: GpuSpec.matrix_tflops) × fitted efficiencies."""
    measured = calibration.measurement_for(device)
    if measured is not None and measured.prefill_tflops:
        return measured.prefill_tflops * 1e12
    spec = device.spec
    peak_tflops = spec.matrix_tflops
    if not peak_tflops:
        if spec.kind == "cpu":
            return (device.threads or 1) * CPU_FLOP_PER_CORE_PER_S * calibration.backend("CPU").compute_efficiency
        peak_tflops = spec.mem_bandwidth_gb_per_s * family_flop_per_byte(spec) / 1000
    params = calibration.backend(backend or default_backend(spec))
    eff = params.compute_efficiency
    eff *= quant_factor(calibration.quant_compute_factor, quant.id)
    eff *= calibration.arch_compute_factor.get(arch_family(spec), 1.0)
    eff *= calibration.era_factors()[1]
    return peak_tflops * 1e12 * min(eff, 1.0)


@lru_cache(maxsize=64)
def family_flop_per_byte(spec: GpuSpec) -> float:
    """For a card with no FP16/FP32 figure, published or derived (a device described by hand without one, since
    every catalog GPU has one): the median FLOP:byte ratio (FP16 TFLOPS ÷ bandwidth) of catalog
    cards of its architecture family (all cards when the family has none). Prefill from it is an approximation."""
    from gpumix.hardware.catalog import all_gpus

    def ratios(same_family: bool) -> list[float]:
        return sorted(
            g.fp16_tflops * 1000 / g.mem_bandwidth_gb_per_s
            for g in all_gpus()
            if g.fp16_tflops and g.mem_bandwidth_gb_per_s and (not same_family or arch_family(g) == arch_family(spec))
        )

    values = ratios(True) or ratios(False)
    return values[len(values) // 2] if values else 100.0


def link_gb_per_s(links: Links, device_position: int) -> float:
    if links.network_gb_per_s is not None:
        return links.network_gb_per_s
    if links.nvlink and links.nvlink_gb_per_s:
        return links.nvlink_gb_per_s
    lanes = links.pcie_lanes[device_position] if device_position < len(links.pcie_lanes) else 16
    return pcie_gb_per_s(links.pcie_gen, lanes)


def pcie_gb_per_s(gen: int, lanes: int) -> float:
    """Payload bandwidth of a PCIe link per direction (unknown generations count as Gen4)."""
    return PCIE_GB_PER_S_PER_LANE.get(gen, PCIE_GB_PER_S_PER_LANE[4]) * lanes


def layer_split_hop_s(model: ModelSpec, links: Links, calibration: Calibration, position: int, batch: int = 1) -> float:
    """One activation copy between consecutive devices of a layer split (f32 hidden state per sequence)."""
    payload = model.hidden_size * 4 * batch
    latency = calibration.link_latency_s + links.network_latency_s
    return latency + payload / (link_gb_per_s(links, position) * GB)


def allreduce_s(model: ModelSpec, links: Links, tp: int, batch: int, positions: range) -> float:
    """One all-reduce of the hidden state across `tp` GPUs (ring: 2(tp-1)/tp of the payload per GPU)."""
    payload = model.hidden_size * 2 * batch  # bf16 activations
    bw = min(link_gb_per_s(links, p) for p in positions) * GB
    latency = ALLREDUCE_LATENCY_NVLINK_S if links.nvlink else ALLREDUCE_LATENCY_PCIE_S
    t = latency * (tp - 1) + 2 * (tp - 1) / tp * payload / bw
    if links.topology == "SYS" and not links.nvlink:
        t *= SYS_TOPOLOGY_PENALTY
    return t
