"""The model and quant catalogs: every listed model resolves, shapes agree with published totals, quants are exact."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import gguf
import pytest

from gpumix.errors import GpumixError
from gpumix.models.catalog import all_models, all_quants, resolve_model, resolve_quant, search_models, strict_key
from gpumix.models.params import Shapes, count_params
from gpumix.units import GiB

# The models issue 2 lists, by the names a user would type.
ISSUE_MODELS = {
    "Llama 2 7B": "llama-2-7b",
    "Llama 2 13B": "llama-2-13b",
    "Llama 2 70B": "llama-2-70b",
    "Llama 3 8B": "llama-3-8b",
    "Llama 3 70B": "llama-3-70b",
    "Llama 3.1 8B": "llama-3.1-8b",
    "Llama 3.1 70B": "llama-3.1-70b",
    "Llama 3.3 70B": "llama-3.3-70b",
    "Llama 3.2 1B": "llama-3.2-1b",
    "Llama 3.2 3B": "llama-3.2-3b",
    "CodeLlama 7B": "codellama-7b",
    "CodeLlama 13B": "codellama-13b",
    "CodeLlama 34B": "codellama-34b",
    "Mistral 7B": "mistral-7b",
    "Mixtral 8x7B": "mixtral-8x7b",
    "Qwen 2.5 7B": "qwen2.5-7b",
    "Qwen 2.5 14B": "qwen2.5-14b",
    "Qwen 2.5 32B": "qwen2.5-32b",
    "Qwen 2.5 72B": "qwen2.5-72b",
    "Qwen 2.5 Coder 32B": "qwen2.5-coder-32b",
    "TinyLlama 1.1B": "tinyllama-1.1b",
    "Gemma 3 270M": "gemma-3-270m",
    "Gemma 3 1B": "gemma-3-1b",
    "Gemma 3 4B": "gemma-3-4b",
    "Gemma 3 12B": "gemma-3-12b",
    "Gemma 3 27B": "gemma-3-27b",
    "Llama Guard 3 8B": "llama-guard-3-8b",
    "gpt-oss 20B": "gpt-oss-20b",
    "gpt-oss 120B": "gpt-oss-120b",
    "SDXL": "sdxl-base",
    "SDXL refiner": "sdxl-refiner",
    "Flux.1 Schnell": "flux.1-schnell",
    "Whisper large-v3": "whisper-large-v3",
    "BGE-M3": "bge-m3",
    "BGE reranker v2 m3": "bge-reranker-v2-m3",
}

# Free-text names in /work/shared/calibration/{measurements,multigpu}.csv and common repo/ollama spellings.
ALIASES = {
    "Mistral 7B Instruct v0.2": "mistral-7b-instruct-v0.2",
    "gpt-oss 20B (MoE, ~3.6B active)": "gpt-oss-20b",
    "llama-3-8b": "llama-3-8b",
    "Llama-3.1-8B-Instruct": "llama-3.1-8b",
    "meta-llama/Meta-Llama-3-8B": "llama-3-8b",
    "Meta-Llama-3-70B-Instruct": "llama-3-70b",
    "meta-llama/Llama-3.3-70B-Instruct": "llama-3.3-70b",
    "Qwen/Qwen2.5-Coder-32B-Instruct": "qwen2.5-coder-32b",
    "google/gemma-3-27b-it": "gemma-3-27b",
    "gemma-3-270m-it-Q4_K_M.gguf": "gemma-3-270m",
    "openai/gpt-oss-120b": "gpt-oss-120b",
    "llama3.2:3b": "llama-3.2-3b",
    "TinyLlama/TinyLlama-1.1B-Chat-v1.0": "tinyllama-1.1b",
    "mistralai/Mixtral-8x7B-Instruct-v0.1": "mixtral-8x7b",
}

CALIBRATION = Path(__file__).resolve().parents[3] / "shared" / "calibration"

# Published totals, independent of the catalog's own numbers (the ratio must stay within 2%).
#   llama-bench "params" column in shared/calibration/measurements.csv (params_b, from the real GGUF files)
#   model cards: Qwen2.5 (7.61B, 14.7B, 32.5B, 72.7B), Llama 3.2 (1.23B, 3.21B), Mixtral (46.7B total, 12.9B active),
#   OpenAI gpt-oss model card (20.9B / 116.8B total), TinyLlama card (1.1B), Code Llama paper (7B/13B/34B),
#   Llama 2 paper (70B), Gemma 3 technical report table 1 (embedding + non-embedding params, vision excluded).
PUBLISHED_PARAMS = {
    "llama-3-8b": 8.03e9,
    "llama-3-70b": 70.55e9,
    "llama-2-7b": 6.74e9,
    "llama-2-13b": 13.02e9,
    "llama-2-70b": 70e9,
    "mistral-7b-instruct-v0.2": 7.24e9,
    "gpt-oss-20b": 20.91e9,
    "gpt-oss-120b": 116.8e9,
    "qwen2.5-7b": 7.61e9,
    "qwen2.5-14b": 14.7e9,
    "qwen2.5-32b": 32.5e9,
    "qwen2.5-72b": 72.7e9,
    "llama-3.2-1b": 1.23e9,
    "llama-3.2-3b": 3.21e9,
    "mixtral-8x7b": 46.7e9,
    "tinyllama-1.1b": 1.1e9,
    "codellama-7b": 7e9 * 0.963,  # the paper's "7B" is Llama 2 7B's 6.74B shapes
    "codellama-34b": 34e9,
    "gemma-3-270m": 0.270e9,
    # model cards: Qwen2.5 0.5B/1.5B/3B (0.49B, 1.54B, 3.09B), Qwen3 0.6B (0.6B), SmolLM2 (135M, 360M, 1.7B),
    # IBM granite-3.0-1b-a400m (1.3B total: the "1b" in its name rounds 1.33B down)
    "qwen2.5-0.5b": 0.49e9,
    "qwen2.5-1.5b": 1.54e9,
    "qwen2.5-3b": 3.09e9,
    "qwen3-0.6b": 0.6e9,
    "smollm2-135m": 135e6,
    "smollm2-360m": 360e6,
    "smollm2-1.7b": 1.7e9,
    "granite-3.0-1b-a400m": 1.33e9,
    "gemma-3-1b": (302 + 698) * 1e6,
    "gemma-3-4b": (675 + 3209) * 1e6,
    "gemma-3-12b": (1012 + 10759) * 1e6,
    "gemma-3-27b": (1416 + 25600) * 1e6,
}


@pytest.mark.parametrize(("name", "model_id"), sorted({**ISSUE_MODELS, **ALIASES}.items()))
def test_names_resolve(name: str, model_id: str) -> None:
    assert resolve_model(name).id == model_id


def test_no_two_entries_share_a_name() -> None:
    seen: dict[str, str] = {}
    for model in all_models():
        for name in {strict_key(n) for n in (model.id, model.name, *model.aliases)}:
            assert seen.setdefault(name, model.id) == model.id, f"{name} names {seen[name]} and {model.id}"


def test_calibration_csv_names_resolve_or_are_unknown() -> None:
    if not CALIBRATION.is_dir():
        pytest.skip("shared/calibration not present")
    names: set[str] = set()
    for file in ("measurements.csv", "multigpu.csv"):
        with (CALIBRATION / file).open() as handle:
            names |= {row["model"] for row in csv.DictReader(handle)}
    resolved = set()
    for name in names:
        try:
            resolved.add(resolve_model(name).id)
        except GpumixError as exc:
            assert any(word in name for word in ("Gemma 4", "MiniMax", "Qwen3.6")), f"{name}: {exc}"
    assert {"llama-3-8b", "llama-3-70b", "llama-2-7b", "llama-2-13b", "gpt-oss-20b"} <= resolved


def test_unknown_model_lists_closest() -> None:
    with pytest.raises(GpumixError) as err:
        resolve_model("Lama 3 8B")
    assert "llama-3-8b" in (err.value.hint or "")


@pytest.mark.parametrize(("model_id", "published"), sorted(PUBLISHED_PARAMS.items()))
def test_params_within_2pct_of_published(model_id: str, published: float) -> None:
    assert resolve_model(model_id).params_total == pytest.approx(published, rel=0.02)


@pytest.mark.parametrize("model", all_models("llm"), ids=lambda m: m.id)
def test_shapes_reproduce_params(model) -> None:
    """The catalog's shapes and its parameter count agree (a wrong head count or width shows up here)."""
    shapes = Shapes(
        model.architecture, model.n_layers, model.hidden_size, model.n_heads, model.n_kv_heads, model.head_dim,
        model.intermediate_size, model.vocab_size, model.tied_embeddings, model.n_experts, model.n_experts_active,
    )
    total, active = count_params(shapes)
    assert total == pytest.approx(model.params_total, rel=1e-3)
    if model.is_moe:
        assert active == pytest.approx(model.params_active, rel=1e-3)
    if model.swa_layers:
        assert len(model.swa_layers) == model.n_layers


def test_kv_fields_exact() -> None:
    llama3 = resolve_model("Llama 3 8B")
    assert (llama3.n_layers, llama3.n_kv_heads, llama3.head_dim, llama3.n_heads) == (32, 8, 128, 32)
    assert resolve_model("Llama 3 70B").n_layers == 80
    assert resolve_model("Llama 2 7B").n_kv_heads == 32  # no GQA in Llama 2 7B
    assert resolve_model("Llama 3.1 8B").context_length == 131072


def test_gemma3_five_local_one_global() -> None:
    for model_id, window in (("gemma-3-270m", 512), ("gemma-3-1b", 512), ("gemma-3-27b", 1024)):
        model = resolve_model(model_id)
        assert model.sliding_window == window
        globals_ = [i for i, swa in enumerate(model.swa_layers) if not swa]
        assert globals_ == list(range(5, model.n_layers, 6))


def test_moe_models() -> None:
    oss = resolve_model("gpt-oss 20B")
    assert (oss.n_experts, oss.n_experts_active, oss.sliding_window) == (32, 4, 128)
    assert oss.swa_layers[:4] == (True, False, True, False)
    # OpenAI's 3.6B active excludes the 201,088 x 2,880 embedding table, which ours includes
    assert oss.params_active - oss.vocab_size * oss.hidden_size == pytest.approx(3.6e9, rel=0.02)
    assert resolve_model("Mixtral 8x7B").params_active == pytest.approx(12.9e9, rel=0.02)


def test_services_have_memory_speed_and_source() -> None:
    services = [m for m in all_models() if m.kind != "llm"]
    assert {m.kind for m in services} == {"image", "audio", "embedding", "reranker"}
    for m in services:
        assert m.service_memory and m.speed_unit and m.reference_speed and m.reference_gpu, m.id
        assert m.source and m.service_memory.source and all(b.source for b in m.service_memory.buffers), m.id


def test_search() -> None:
    ids = [m.id for m in search_models("gemma")]
    assert ids == ["gemma-3-270m", "gemma-3-1b", "gemma-3-4b", "gemma-3-12b", "gemma-3-27b"]
    assert len(search_models("")) == len(all_models())


# ---------------------------------------------------------------- quants

BLOCK_TYPES = {
    "f32": "F32", "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0", "q6_k": "Q6_K", "q5_0": "Q5_0", "q5_1": "Q5_1",
    "q4_0": "Q4_0", "q4_1": "Q4_1", "iq4_nl": "IQ4_NL", "mxfp4": "MXFP4",
}
MIXED_BASE = {"q5_k_m": "Q5_K", "q4_k_m": "Q4_K", "q4_k_s": "Q4_K", "q3_k_m": "Q3_K", "q2_k": "Q2_K", "iq4_xs": "IQ4_XS"}
ISSUE_QUANTS = ["f32", "f16", "bf16", "fp8", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0", "q4_1", "q3_k_m", "q2_k",
                "iq4_xs", "awq-int4", "gptq-int4", "mxfp4"]


def test_issue_quants_present() -> None:
    assert set(ISSUE_QUANTS) <= {q.id for q in all_quants()}


@pytest.mark.parametrize(("quant_id", "ggml_name"), sorted(BLOCK_TYPES.items()))
def test_block_quant_bpw_equals_ggml_block_size(quant_id: str, ggml_name: str) -> None:
    block_weights, block_bytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[ggml_name]]
    quant = resolve_quant(quant_id)
    assert (quant.block_weights, quant.block_bytes) == (block_weights, block_bytes)
    assert quant.bits_per_weight == block_bytes * 8 / block_weights


@pytest.mark.parametrize(("quant_id", "ggml_name"), sorted(MIXED_BASE.items()))
def test_mixed_recipes_cost_more_than_their_base_block(quant_id: str, ggml_name: str) -> None:
    block_weights, block_bytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[ggml_name]]
    quant = resolve_quant(quant_id)
    base_bpw = block_bytes * 8 / block_weights
    assert (quant.block_weights, quant.block_bytes) == (block_weights, block_bytes)
    assert base_bpw < quant.bits_per_weight < base_bpw + 1.0


def test_q4_k_m_matches_measured_file_size() -> None:
    """Llama 3 8B Q4_K_M is 4.58 GiB (llama-bench, shared/calibration/measurements.csv) for 8.03B params."""
    predicted_bytes = resolve_model("Llama 3 8B").params_total * resolve_quant("Q4_K_M").bytes_per_weight
    assert predicted_bytes / GiB == pytest.approx(4.58, rel=0.01)


def test_group_quant_overheads() -> None:
    awq = resolve_quant("awq")
    assert awq.bits_per_weight == pytest.approx((128 * 4 + 16 + 4) / 128)  # 4-bit weights + fp16 scale + 4-bit zero
    assert resolve_quant("gptq-int4").engines == ("vllm",)
    assert resolve_quant("fp8").compute_dtype == "fp8"
    assert "llama.cpp" in resolve_quant("q4_k_m").engines and "vllm" not in resolve_quant("q4_k_m").engines


@pytest.mark.parametrize(
    ("name", "quant_id"),
    [("Q4_K_M", "q4_k_m"), ("q4km", "q4_k_m"), ("QAT Q4_0", "q4_0"), ("F16", "f16"), ("MXFP4", "mxfp4"),
     ("IQ4_XS", "iq4_xs"), ("Q3_K_M", "q3_k_m"), ("awq", "awq-int4"), ("GPTQ", "gptq-int4"), ("FP8", "fp8"),
     ("bfloat16", "bf16")],
)
def test_quant_aliases(name: str, quant_id: str) -> None:
    assert resolve_quant(name).id == quant_id


def test_unknown_quant() -> None:
    with pytest.raises(GpumixError) as err:
        resolve_quant("q4_k_x")
    assert "q4_k_m" in (err.value.hint or "")


def test_every_quant_cites_a_source() -> None:
    for quant in all_quants():
        assert quant.source and math.isfinite(quant.bits_per_weight) and quant.bits_per_weight > 0


def test_file_bpw_predicts_calibration_file_sizes() -> None:
    """params x file_bits_per_weight reproduces every llama-bench model size in the calibration CSVs within 3%."""
    if not CALIBRATION.is_dir():
        pytest.skip("shared/calibration not present")
    checked = set()
    for file in ("measurements.csv", "multigpu.csv"):
        with (CALIBRATION / file).open() as handle:
            for row in csv.DictReader(handle):
                if not row["model_size_gb"] or (row["model"], row["quant"]) in checked:
                    continue
                model, quant = resolve_model(row["model"]), resolve_quant(row["quant"])
                bpw = quant.file_bits_per_weight or quant.bits_per_weight
                predicted_gb = model.params_total * bpw / 8 / 1e9
                assert predicted_gb == pytest.approx(float(row["model_size_gb"]), rel=0.03), (row["model"], row["quant"])
                checked.add((row["model"], row["quant"]))
    assert len(checked) >= 10
