"""read_hf_config: config.json shapes -> ModelSpec, safetensors headers -> exact bytes, bad input -> GpumixError."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from gpumix.errors import GpumixError
from gpumix.models.catalog import load_model, resolve_model
from gpumix.models.hf_config import read_hf_config

# Values of meta-llama/Meta-Llama-3-8B/config.json (the fields gpumix reads).
LLAMA3_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "vocab_size": 128256,
    "max_position_embeddings": 8192, "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
}
# google/gemma-3-4b-it/config.json: the decoder's shapes sit in text_config
GEMMA3_4B = {
    "model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"],
    "text_config": {"model_type": "gemma3_text", "hidden_size": 2560, "intermediate_size": 10240,
                    "num_attention_heads": 8, "num_hidden_layers": 34, "num_key_value_heads": 4, "head_dim": 256,
                    "sliding_window": 1024, "vocab_size": 262208, "max_position_embeddings": 131072},
    "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 1152},
}
# openai/gpt-oss-20b/config.json (trimmed to the fields read)
GPT_OSS_20B = {
    "model_type": "gpt_oss", "hidden_size": 2880, "intermediate_size": 2880, "num_attention_heads": 64,
    "num_hidden_layers": 24, "num_key_value_heads": 8, "head_dim": 64, "num_local_experts": 32,
    "experts_per_token": 4, "num_experts_per_tok": 4, "vocab_size": 201088, "max_position_embeddings": 131072,
    "sliding_window": 128, "tie_word_embeddings": False, "quantization_config": {"quant_method": "mxfp4"},
    "layer_types": ["sliding_attention", "full_attention"] * 12,
}
QWEN25_7B = {
    "model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_attention_heads": 28,
    "num_hidden_layers": 28, "num_key_value_heads": 4, "vocab_size": 152064, "max_position_embeddings": 32768,
    "sliding_window": 131072, "use_sliding_window": False, "tie_word_embeddings": False,
}


def write_config(folder: Path, config: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.json"
    path.write_text(json.dumps(config))
    return path


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> int:
    """A real safetensors file (zero data): returns the data bytes."""
    itemsize = {"BF16": 2, "F16": 2, "F32": 4, "I32": 4, "U8": 1}
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        n_bytes = itemsize[dtype]
        for dim in shape:
            n_bytes *= dim
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n_bytes]}
        offset += n_bytes
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + bytes(offset))
    return offset


@pytest.mark.parametrize(
    ("config", "catalog_id"), [(LLAMA3_8B, "llama-3-8b"), (GEMMA3_4B, "gemma-3-4b"), (GPT_OSS_20B, "gpt-oss-20b"),
                               (QWEN25_7B, "qwen2.5-7b")],
)
def test_config_matches_catalog(tmp_path: Path, config: dict, catalog_id: str) -> None:
    spec = read_hf_config(write_config(tmp_path / catalog_id, config))
    entry = resolve_model(catalog_id)
    for field in ("architecture", "n_layers", "hidden_size", "n_heads", "n_kv_heads", "head_dim", "intermediate_size",
                  "vocab_size", "context_length", "sliding_window", "swa_layers", "tied_embeddings", "n_experts",
                  "n_experts_active"):
        assert getattr(spec, field) == getattr(entry, field), field
    assert spec.params_total == entry.params_total
    assert spec.params_active == entry.params_active


def test_file_quant_from_config(tmp_path: Path) -> None:
    assert read_hf_config(write_config(tmp_path / "a", GPT_OSS_20B)).file_quant == "mxfp4"
    assert read_hf_config(write_config(tmp_path / "b", LLAMA3_8B)).file_quant == "bf16"


def test_safetensors_headers_give_layer_bytes(tmp_path: Path) -> None:
    config = {**LLAMA3_8B, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
              "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 100}
    folder = tmp_path / "tiny"
    write_config(folder, config)
    layer = {
        "self_attn.q_proj.weight": [64, 64], "self_attn.k_proj.weight": [32, 64], "self_attn.v_proj.weight": [32, 64],
        "self_attn.o_proj.weight": [64, 64], "mlp.gate_proj.weight": [128, 64], "mlp.up_proj.weight": [128, 64],
        "mlp.down_proj.weight": [64, 128], "input_layernorm.weight": [64], "post_attention_layernorm.weight": [64],
    }
    shard_a = {f"model.layers.0.{k}": ("BF16", v) for k, v in layer.items()} | {"model.embed_tokens.weight": ("BF16", [100, 64])}
    shard_b = {f"model.layers.1.{k}": ("BF16", v) for k, v in layer.items()} | {
        "model.norm.weight": ("BF16", [64]), "lm_head.weight": ("BF16", [100, 64])}
    write_safetensors(folder / "model-00001-of-00002.safetensors", shard_a)
    write_safetensors(folder / "model-00002-of-00002.safetensors", shard_b)
    weight_map = {name: "model-00001-of-00002.safetensors" for name in shard_a}
    weight_map |= {name: "model-00002-of-00002.safetensors" for name in shard_b}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    spec = load_model(folder)
    layer_elems = 2 * 64 * 64 + 2 * 32 * 64 + 3 * 128 * 64 + 2 * 64
    assert spec.layer_weight_bytes == (2 * layer_elems, 2 * layer_elems)
    assert spec.non_layer_weight_bytes == 2 * (2 * 100 * 64 + 64)
    assert spec.params_total == 2 * layer_elems + 2 * 100 * 64 + 64  # exact count from the headers
    assert spec.params_total == read_hf_config(folder / "config.json").params_total


def test_missing_shard_named(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    write_config(folder, LLAMA3_8B)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "gone.safetensors"}}))
    with pytest.raises(GpumixError, match="gone.safetensors"):
        read_hf_config(folder)


def test_malformed_json(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"model_type": "llama", ')
    with pytest.raises(GpumixError, match=r"malformed JSON in .*config\.json"):
        read_hf_config(path)


def test_missing_field(tmp_path: Path) -> None:
    config = {k: v for k, v in LLAMA3_8B.items() if k != "num_hidden_layers"}
    with pytest.raises(GpumixError, match="missing num_hidden_layers"):
        read_hf_config(write_config(tmp_path / "x", config))


def test_wrong_type(tmp_path: Path) -> None:
    with pytest.raises(GpumixError, match="hidden_size"):
        read_hf_config(write_config(tmp_path / "x", {**LLAMA3_8B, "hidden_size": "4096"}))


def test_bad_safetensors_header(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    write_config(folder, LLAMA3_8B)
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(GpumixError, match=r"model\.safetensors"):
        read_hf_config(folder)


def test_missing_config(tmp_path: Path) -> None:
    with pytest.raises(GpumixError, match="not found"):
        load_model(tmp_path / "config.json")
    with pytest.raises(GpumixError, match="neither"):
        load_model(tmp_path)
