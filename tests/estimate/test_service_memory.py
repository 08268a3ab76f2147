"""Non-LLM services hold what their parts add up to, each part from the catalog's sources or the model's shapes.

A side service's memory is weights (parameters × the bytes of the type its engine holds them in) + the engine's
own buffers at its defaults + what follows from the shapes (TEI's activations) + the CUDA context — never a
rounded total. These tests recompute each part independently, so an edit that puts a round number back (or
forgets a part) fails here.
"""

from __future__ import annotations

import pytest

from gpumix.errors import GpumixError
from gpumix.estimate.memory import (
    CUDA_CONTEXT_BYTES,
    TEI_DEFAULT_MAX_BATCH_TOKENS,
    dtype_bytes,
    service_memory,
    service_memory_parts,
    tei_activation_bytes,
)
from gpumix.launch.commands import render_plan
from gpumix.models.catalog import all_models, load_model
from gpumix.models.spec import ModelSpec
from gpumix.plan.planner import plan_services
from gpumix.plan.spec import parse_plan_text
from gpumix.units import GB, MiB

SERVICES = [m for m in all_models() if m.kind != "llm"]


@pytest.mark.parametrize("model", SERVICES, ids=lambda m: m.id)
def test_each_service_is_exactly_its_sourced_parts(model: ModelSpec) -> None:
    spec = model.service_memory
    assert spec is not None and spec.source and spec.setting, model.id
    assert all(b.source and b.size > 0 for b in spec.buffers), model.id
    parts = {kind: sum(b.size_bytes for b in spec.buffers if b.kind == kind) for kind in ("weights", "kv", "compute")}
    activations = tei_activation_bytes(model, spec.weights_dtype) if spec.engine == "tei" else 0
    on_gpu = service_memory(model, is_gpu=True)
    assert on_gpu.weights_bytes == int(model.params_total * dtype_bytes(spec.weights_dtype) + parts["weights"])
    assert on_gpu.kv_cache_bytes == parts["kv"]
    assert on_gpu.compute_bytes == parts["compute"] + activations
    assert on_gpu.overhead_bytes == CUDA_CONTEXT_BYTES
    # No folklore: a total that is a round number of GB (VISION.md's "~8 GB", "~6 GB") is a sign of a copied figure.
    assert on_gpu.total_bytes % (GB // 10) != 0, model.id
    on_cpu = service_memory(model, is_gpu=False)
    assert on_cpu.overhead_bytes == 0
    cpu_dtype = spec.cpu_weights_dtype or spec.weights_dtype
    assert on_cpu.weights_bytes == int(model.params_total * dtype_bytes(cpu_dtype) + parts["weights"])


def test_image_services_hold_two_sd_cpp_graph_buffers_at_1024() -> None:
    """sd-server keeps the VAE's decode buffer between images and allocates the diffusion graph's on top."""
    for model_id, unet_mib in (("sdxl-base", 830.86), ("sdxl-refiner", 968.43)):
        memory = service_memory(load_model(model_id), is_gpu=True)
        assert memory.compute_bytes == round(unet_mib * MiB) + round(2560.25 * MiB)
    sdxl = service_memory(load_model("sdxl"), is_gpu=True)
    # Cross-check against sd.cpp's own weight log for the SDXL architecture (6558.89 MiB with a decoder-only VAE;
    # the full checkpoint adds the VAE encoder's ~0.07 GB): within 1%.
    assert sdxl.weights_bytes == pytest.approx(6558.89 * MiB, rel=0.01)
    assert 10.5 * GB < sdxl.total_bytes < 11.5 * GB  # not the scenario's "~8 GB"


def test_flux_q8_0_weights_match_sd_cpp_docs_measurement() -> None:
    flux = load_model("flux.1-schnell")
    assert flux.service_memory is not None and flux.service_memory.weights_dtype == "q8_0"
    transformer = flux.params_total * 34 / 32  # ggml q8_0: 34 bytes per block of 32
    assert transformer == pytest.approx(12068.09 * MiB, rel=0.005)  # docs/flux.md, flux1-dev q8_0 (same shapes)


def test_whisper_kv_follows_whisper_cpp_allocation() -> None:
    """whisper_kv_cache_init: K and V of n_text_state × layers × cells in f16; cells padded to 256; the self cache
    re-created for best_of 2 decoders with factor n_decoders + 2 (whisper-server defaults)."""
    n_state, n_layer, f16 = 1280, 32, 2  # openai/whisper-large-v3 config: d_model 1280, decoder_layers 32
    text_cells = 512  # pad(448, 256)
    audio_cells = 1536  # pad(1500, 256)
    kv_self = 2 * n_state * n_layer * text_cells * f16 * (2 + 2)
    kv_cross = 2 * n_state * n_layer * audio_cells * f16
    kv_pad = 2 * n_state * 1 * audio_cells * f16
    whisper = load_model("whisper-large-v3")
    assert service_memory(whisper, is_gpu=True).kv_cache_bytes == kv_self + kv_cross + kv_pad
    assert kv_cross / 1e6 == pytest.approx(251.66, abs=0.01) and kv_pad / 1e6 == pytest.approx(7.86, abs=0.01)
    # The weights match whisper.cpp's load log for ggml-large-v3.bin (model size = 3094.36 MB) within 0.5%.
    assert service_memory(whisper, is_gpu=True).weights_bytes == pytest.approx(3094.36e6, rel=0.005)
    # And the whole process is what whisper.cpp's README table says for large (~3.9 GB, CPU) within 5%.
    assert service_memory(whisper, is_gpu=False).total_bytes == pytest.approx(3.9e9, rel=0.05)


@pytest.mark.parametrize("model_id, head", [("bge-m3", "pooler"), ("bge-reranker-v2-m3", "classifier")])
def test_xlm_roberta_parameters_follow_from_the_shapes(model_id: str, head: str) -> None:
    m = load_model(model_id)
    h, i = m.hidden_size, m.intermediate_size
    embeddings = m.vocab_size * h + (m.context_length + 2) * h + h + 2 * h  # words, positions (8194), type, LN
    layer = 4 * (h * h + h) + 2 * h + (h * i + i) + (i * h + h) + 2 * h  # q k v o, LN, up, down, LN
    extra = h * h + h if head == "pooler" else (h * h + h) + (h + 1)  # pooler, or dense + out_proj to 1 label
    assert m.params_total == embeddings + m.n_layers * layer + extra


def test_tei_activations_and_dtype_match_what_gpumix_launches() -> None:
    m = load_model("bge-m3")
    assert tei_activation_bytes(m, "f16") == TEI_DEFAULT_MAX_BATCH_TOKENS * 6 * 1024 * 2  # 16384 tokens × 6 × hidden
    plan = plan_services(parse_plan_text("devices:\n  - gpu: RTX 4090\nservices:\n  - {name: e, model: bge-m3}\n"))
    (spec,) = render_plan(plan)
    launched = spec.argv[spec.argv.index("--dtype") + 1]
    assert m.service_memory is not None
    assert dtype_bytes(launched) == dtype_bytes(m.service_memory.weights_dtype)
    assert "--max-batch-tokens" not in spec.argv  # the activation figure assumes TEI's default


def test_a_service_model_without_memory_parts_is_a_clear_error() -> None:
    from gpumix.errors import GpumixError

    bare = load_model("bge-m3").model_copy(update={"service_memory": None})
    with pytest.raises(GpumixError, match="no service_memory"):
        service_memory(bare, is_gpu=True)


@pytest.mark.parametrize(("model_id", "unet_mib"), [("sdxl", 440.86), ("sdxl-refiner", 596.43)])
def test_low_memory_setting_is_the_same_weights_with_the_sourced_smaller_buffers(model_id, unet_mib):
    """sd-server --diffusion-fa --vae-tiling --vae-conv-direct: the UNet graph with flash attention and a 176 MiB tiled
    VAE decode buffer replace the defaults' buffers; weights and CUDA context are unchanged."""
    model = load_model(model_id)
    default = service_memory(model, is_gpu=True)
    low = service_memory(model, is_gpu=True, setting="low")
    assert low.weights_bytes == default.weights_bytes and low.overhead_bytes == default.overhead_bytes
    assert low.compute_bytes == round(unet_mib * MiB) + 176 * MiB
    assert low.total_bytes == sum(p.size_bytes for p in service_memory_parts(model, True, "low"))
    assert 2.8 * GB < default.total_bytes - low.total_bytes < 3.0 * GB
    whisper = load_model("whisper-large-v3")
    with pytest.raises(GpumixError, match="no low-memory setting"):
        service_memory(whisper, is_gpu=True, setting="low")
