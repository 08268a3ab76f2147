"""Memory model against published architecture facts and llama.cpp's allocation rules."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpumix.estimate import Placement, Workload, estimate
from gpumix.estimate.memory import (
    CUDA_CONTEXT_BYTES,
    VLLM_CPU_RUNTIME_BYTES,
    VLLM_CUDA_GRAPH_BYTES,
    kv_cache_bytes_per_token,
    kv_cells,
    memory_for_layers,
    swa_kv_cells,
    total_weight_bytes,
    vllm_activation_bytes,
    vllm_default_batched_tokens,
)
from gpumix.hardware.catalog import all_gpus, resolve_gpu
from gpumix.hardware.devices import cpu_device, device_from_spec
from gpumix.models.catalog import resolve_model, resolve_quant
from gpumix.units import GB, GiB


def test_llama3_8b_kv_is_128_kib_per_token_in_f16():
    # engines.md §2: 32 layers × 8 KV heads × 128 dims × (K+V) × 2 bytes = 128 KiB.
    assert kv_cache_bytes_per_token(resolve_model("llama-3-8b"), "f16") == 128 * 1024


def test_llama3_70b_q4_k_m_weights_match_the_published_file_size():
    # measurements.csv: Llama 3 70B Q4_K_M = 39.59 GiB (42.5 GB); VISION.md's folklore check uses ~42.5 GB.
    weights = total_weight_bytes(resolve_model("llama-3-70b"), resolve_quant("q4_k_m"))
    assert weights / GB == pytest.approx(42.5, rel=0.03)


def test_70b_q4_k_m_does_not_fit_a_3060_plus_3090():
    model, quant = resolve_model("llama-3.3-70b"), resolve_quant("q4_k_m")
    devices = (device_from_spec(resolve_gpu("RTX 3090"), 0), device_from_spec(resolve_gpu("RTX 3060 12GB"), 1))
    result = estimate(model, quant, Placement(mode="layer_split", devices=devices), Workload(context=8192))
    assert not result.fits
    assert sum(d.shortfall_bytes for d in result.devices) > 4 * GiB


def test_kv_cells_round_up_to_256_and_sliding_window_layers_hold_fewer():
    gemma = resolve_model("gemma-3-270m")
    work = Workload(context=1000, parallel=4)
    assert kv_cells(work) == 4096
    # Gemma 3: window 512; unified KV: 512·4 + 512 = 2560 cells (seen in llama-server's log).
    assert swa_kv_cells(gemma, work) == 2560
    assert swa_kv_cells(gemma, work.model_copy(update={"kv_unified": False})) == 4 * 1024


def test_cpu_offload_splits_memory_and_is_slower_than_all_on_gpu():
    model, quant = resolve_model("llama-3-8b"), resolve_quant("q4_k_m")
    from gpumix.hardware.devices import cpu_device

    gpu = device_from_spec(resolve_gpu("RTX 3060 12GB"), 0)
    cpu = cpu_device(64 * GiB, 60.0, 8)
    on_gpu = estimate(model, quant, Placement(mode="single", devices=(gpu,)), Workload(context=4096))
    offload = estimate(model, quant, Placement(mode="cpu_offload", devices=(cpu, gpu), layers=(8, 24)),
                       Workload(context=4096))  # fmt: skip
    assert offload.devices[0].memory.weights_bytes > 0 and offload.devices[1].layers == 24
    assert offload.decode_tokens_per_s < on_gpu.decode_tokens_per_s


GPU_SPECS = [g for g in all_gpus() if g.vram_bytes > 0 and g.mem_bandwidth_gb_per_s > 0]
MODELS = ["llama-3-8b", "llama-2-13b", "qwen2.5-32b", "llama-3-70b", "mixtral-8x7b", "gemma-3-12b"]
QUANTS = ["f16", "q8_0", "q4_k_m", "q4_0", "q2_k"]


@settings(max_examples=60, deadline=None)
@given(
    gpu=st.sampled_from(GPU_SPECS),
    model=st.sampled_from(MODELS),
    quant=st.sampled_from(QUANTS),
    ctx=st.sampled_from([512, 4096, 32768]),
    parallel=st.integers(1, 16),
)
def test_no_prediction_beats_the_bandwidth_bound(gpu, model, quant, ctx, parallel):
    spec, q = resolve_model(model), resolve_quant(quant)
    device = device_from_spec(gpu, 0)
    result = estimate(spec, q, Placement(mode="single", devices=(device,)), Workload(context=ctx, parallel=parallel))
    assert 0 < result.decode_tokens_per_s <= result.bandwidth_bound_tokens_per_s
    # Aggregate over `parallel` streams can't beat parallel × the one-stream bound either.
    assert result.aggregate_tokens_per_s <= parallel * result.bandwidth_bound_tokens_per_s * 1.0001
    assert result.prefill_tokens_per_s > 0 and result.ttft_s > 0


@pytest.mark.parametrize(
    ("gpu", "tokens"),
    [("RTX 4090", 2048), ("A100 SXM4 80GB", 2048), ("H100 PCIe 80GB", 8192), ("H200 SXM 141GB", 8192)],
)
def test_vllm_batched_tokens_follow_vllm_serves_defaults_per_card(gpu: str, tokens: int) -> None:
    # vLLM 0.32 EngineArgs.get_batch_defaults: >= 70 GiB and not an A100 (PR #17885) -> 8192, other GPUs 2048.
    assert vllm_default_batched_tokens(device_from_spec(resolve_gpu(gpu), 0)) == tokens


def test_vllm_batched_tokens_on_the_largest_cards_and_on_the_cpu_build() -> None:
    h200 = device_from_spec(resolve_gpu("H200 SXM 141GB"), 0)
    assert vllm_default_batched_tokens(h200.model_copy(update={"memory_total_bytes": 180 * GiB})) == 16384
    cpu = cpu_device(16 * GiB, 50.0, 4)
    assert vllm_default_batched_tokens(cpu) == 2048 and vllm_default_batched_tokens(cpu, world_size=2) == 4096


def test_vllm_on_the_cpu_build_books_its_runtime_and_no_cuda_graphs() -> None:
    model, quant = resolve_model("smollm2-135m"), resolve_quant("bf16")
    work = Workload(context=2048, parallel=2, engine="vllm")
    layers = range(model.n_layers)
    gpu = device_from_spec(resolve_gpu("RTX 4090"), 0)
    on = {d.kind: memory_for_layers(model, quant, work, layers, holds_output=True, holds_input=True, device=d)
          for d in (gpu, cpu_device(16 * GiB, 50.0, 4))}  # fmt: skip
    activations = vllm_activation_bytes(model, 1, 2048)  # both sized for 2048 batched tokens
    assert on["cpu"].compute_bytes == activations and on["gpu"].compute_bytes == activations + VLLM_CUDA_GRAPH_BYTES
    assert on["cpu"].overhead_bytes == VLLM_CPU_RUNTIME_BYTES and on["gpu"].overhead_bytes == CUDA_CONTEXT_BYTES
    assert on["cpu"].weights_bytes == on["gpu"].weights_bytes and on["cpu"].kv_cache_bytes == on["gpu"].kv_cache_bytes
