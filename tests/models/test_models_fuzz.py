"""Property tests: garbage in, GpumixError (or a valid spec) out — never another exception."""

from __future__ import annotations

import json
import struct
import tempfile
from functools import lru_cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from models_fixtures import write_gguf

from gpumix.errors import GpumixError
from gpumix.models.gguf_file import read_gguf
from gpumix.models.hf_config import read_hf_config
from gpumix.models.spec import ModelSpec

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)
CONFIG_KEYS = ["model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
               "head_dim", "intermediate_size", "vocab_size", "max_position_embeddings", "tie_word_embeddings",
               "sliding_window", "sliding_window_pattern", "layer_types", "num_local_experts", "num_experts_per_tok",
               "text_config", "quantization_config", "torch_dtype", "use_sliding_window"]
VALID_CONFIG = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                "intermediate_size": 128, "vocab_size": 100}


@lru_cache(maxsize=1)
def valid_gguf_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        return write_gguf(Path(tmp) / "v.gguf", n_layers=2, n_vocab=40).read_bytes()


def check_gguf(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.gguf"
        path.write_bytes(data)
        try:
            assert isinstance(read_gguf(path), ModelSpec)
        except GpumixError as exc:
            assert str(path) in exc.message or "f.gguf" in exc.message


def check_config(text: str, safetensors: bytes | None = None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_text(text)
        if safetensors is not None:
            (Path(tmp) / "model.safetensors").write_bytes(safetensors)
        try:
            assert isinstance(read_hf_config(Path(tmp)), ModelSpec)
        except GpumixError as exc:
            assert exc.message


@FUZZ
@given(st.binary(max_size=512))
def test_gguf_random_bytes(data: bytes) -> None:
    check_gguf(data)


@FUZZ
@given(st.binary(max_size=256))
def test_gguf_random_body_after_valid_magic(data: bytes) -> None:
    check_gguf(b"GGUF" + struct.pack("<I", 3) + data)


@FUZZ
@given(st.data())
def test_gguf_mutated_valid_file(data: st.DataObject) -> None:
    blob = bytearray(valid_gguf_bytes())
    if data.draw(st.booleans(), label="truncate"):
        blob = blob[: data.draw(st.integers(0, len(blob) - 1), label="cut")]
    for _ in range(data.draw(st.integers(1, 8), label="n_flips")):
        if blob:
            blob[data.draw(st.integers(0, len(blob) - 1), label="pos")] = data.draw(st.integers(0, 255), label="byte")
    check_gguf(bytes(blob))


@FUZZ
@given(st.binary(max_size=300))
def test_config_random_bytes(data: bytes) -> None:
    check_config(data.decode("latin-1"))


@FUZZ
@given(json_values)
def test_config_random_json(value) -> None:
    check_config(json.dumps(value))


@FUZZ
@given(st.dictionaries(st.sampled_from(CONFIG_KEYS), json_values, max_size=8))
def test_config_valid_with_random_fields(overrides: dict) -> None:
    check_config(json.dumps({**VALID_CONFIG, **overrides}))


@FUZZ
@given(st.binary(max_size=300))
def test_safetensors_random_header(data: bytes) -> None:
    check_config(json.dumps(VALID_CONFIG), safetensors=data)


@FUZZ
@given(json_values)
def test_safetensors_random_json_header(value) -> None:
    blob = json.dumps(value).encode()
    check_config(json.dumps(VALID_CONFIG), safetensors=struct.pack("<Q", len(blob)) + blob + bytes(64))


def test_absurd_layer_counts_are_rejected_not_allocated(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "deep.gguf", n_layers=2)
    blob = bytearray(path.read_bytes())
    key = b"llama.block_count"
    at = blob.index(key) + len(key) + 4  # skip the value type (uint32)
    blob[at : at + 4] = struct.pack("<I", 4_000_000_000)
    path.write_bytes(bytes(blob))
    with pytest.raises(GpumixError, match="block_count"):
        read_gguf(path)
    config = {**VALID_CONFIG, "model_type": "gemma3", "num_hidden_layers": 10**12, "sliding_window": 512}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(GpumixError, match="num_hidden_layers"):
        read_hf_config(tmp_path)
