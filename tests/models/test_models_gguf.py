"""read_gguf against the real Gemma 3 270M Q4_K_M file and against small GGUFs written with gguf.GGUFWriter."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import gguf
import pytest
from models_fixtures import write_gguf

from gpumix.errors import GpumixError
from gpumix.models.catalog import load_model, resolve_model
from gpumix.models.gguf_file import read_gguf, read_gguf_header

Q = gguf.GGMLQuantizationType


# ---------------------------------------------------------------- the real file


@pytest.fixture(scope="module")
def gemma(gemma_gguf: Path):
    return read_gguf(gemma_gguf)


def test_gemma_architecture(gemma) -> None:
    assert gemma.architecture == "gemma3"
    assert (gemma.n_layers, gemma.hidden_size, gemma.n_heads, gemma.n_kv_heads, gemma.head_dim) == (18, 640, 4, 1, 256)
    assert (gemma.context_length, gemma.vocab_size, gemma.intermediate_size) == (32768, 262144, 2048)
    assert gemma.sliding_window == 512
    # the file has no sliding_window_pattern key: llama.cpp's gemma3 default, every 6th layer global
    assert [i for i, swa in enumerate(gemma.swa_layers) if not swa] == [5, 11, 17]
    assert gemma.tied_embeddings and gemma.file_quant == "q4_k_m" and not gemma.is_moe


def test_gemma_matches_catalog_entry(gemma) -> None:
    entry = resolve_model("Gemma 3 270M")
    for field in ("n_layers", "hidden_size", "n_heads", "n_kv_heads", "head_dim", "intermediate_size",
                  "vocab_size", "context_length", "sliding_window", "swa_layers", "tied_embeddings", "params_total"):
        assert getattr(gemma, field) == getattr(entry, field), field


def test_gemma_bytes_equal_gguf_reader_tensors(gemma_gguf: Path, gemma) -> None:
    """Our header walk agrees with the gguf package's GGUFReader tensor by tensor (GGUFReader is slow: 14-40 s on a shared 2-core box)."""
    reader = gguf.GGUFReader(gemma_gguf)
    ours = read_gguf_header(gemma_gguf)
    assert [(t.name, t.n_bytes, t.n_elements) for t in ours.tensors] == [
        (t.name, int(t.n_bytes), int(t.n_elements)) for t in reader.tensors
    ]
    assert ours.data_offset == reader.data_offset
    total = sum(int(t.n_bytes) for t in reader.tensors)
    assert sum(gemma.layer_weight_bytes) + gemma.non_layer_weight_bytes == total
    # the rest of the file is the header (262,144-token vocabulary): a few MB of 253 MB
    size = os.path.getsize(gemma_gguf)
    assert 0 < size - total < 0.03 * size


def test_gemma_layer_bytes_are_per_block(gemma_gguf: Path, gemma) -> None:
    header = read_gguf_header(gemma_gguf)
    block_5 = sum(t.n_bytes for t in header.tensors if t.name.startswith("blk.5."))
    assert gemma.layer_weight_bytes[5] == block_5
    embd = next(t for t in header.tensors if t.name == "token_embd.weight")
    assert embd.ggml_type == Q.Q8_0 and gemma.non_layer_weight_bytes >= embd.n_bytes


def test_load_model_dispatches_gguf(gemma_gguf: Path, gemma) -> None:
    assert load_model(str(gemma_gguf)) == gemma


def test_cache_sees_a_rewritten_file(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "c.gguf", n_layers=2)
    assert read_gguf(path).n_layers == 2
    path.unlink()
    write_gguf(path, n_layers=4)
    assert read_gguf(path).n_layers == 4


# ---------------------------------------------------------------- written files


def test_small_gguf_exact_bytes(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "tiny.gguf", n_layers=3, n_embd=64, n_ff=128, qtype=Q.Q4_0, file_type=2)
    spec = read_gguf(path)
    # per layer: q, o 64x64 + k, v 32x64 + 3 ffn 64x128, all Q4_0 (18 bytes per 32 weights), + 2 f32 norms
    q4_weights = 2 * 64 * 64 + 2 * 32 * 64 + 3 * 64 * 128
    assert spec.layer_weight_bytes == (q4_weights // 32 * 18 + 2 * 64 * 4,) * 3
    # token_embd 256x64 Q8_0 (34 per 32) + output 256x64 Q8_0 + output_norm f32
    assert spec.non_layer_weight_bytes == 2 * (256 * 64 // 32 * 34) + 64 * 4
    assert spec.file_quant == "q4_0" and not spec.tied_embeddings
    assert (spec.n_kv_heads, spec.head_dim, spec.vocab_size, spec.context_length) == (2, 16, 256, 4096)


def test_per_layer_kv_heads_and_tied(tmp_path: Path) -> None:
    spec = read_gguf(write_gguf(tmp_path / "kv.gguf", n_head_kv=[4, 2, 0], tied=True))
    assert spec.kv_heads_per_layer == (4, 2, 0) and spec.n_kv_heads == 4 and spec.tied_embeddings


def test_moe_active_params(tmp_path: Path) -> None:
    spec = read_gguf(write_gguf(tmp_path / "moe.gguf", arch="mixtral", n_experts=8, n_experts_used=2))
    expert_elems = 3 * 3 * 8 * 64 * 128  # 3 layers x (gate, up, down) x 8 experts x 64x128
    assert spec.is_moe and (spec.n_experts, spec.n_experts_active) == (8, 2)
    assert spec.params_total - spec.params_active == expert_elems * 6 / 8


def test_explicit_swa_pattern(tmp_path: Path) -> None:
    flags = [True, False, True]
    spec = read_gguf(write_gguf(tmp_path / "swa.gguf", arch="gemma3", sliding_window=256, swa_pattern=flags))
    assert spec.swa_layers == tuple(flags) and spec.sliding_window == 256
    spec = read_gguf(write_gguf(tmp_path / "swa2.gguf", arch="gpt-oss", n_layers=4, sliding_window=128))
    assert spec.swa_layers == (True, False, True, False)  # llama.cpp's gpt-oss default: period 2


def test_sharded_gguf_reads_every_shard(tmp_path: Path) -> None:
    whole = read_gguf(write_gguf(tmp_path / "one.gguf"))
    (tmp_path / "split").mkdir()
    write_gguf(tmp_path / "split" / "model.gguf", split_max_tensors=10)
    shards = sorted((tmp_path / "split").glob("*.gguf"))
    assert len(shards) > 1
    spec = read_gguf(shards[0])
    assert spec.layer_weight_bytes == whole.layer_weight_bytes
    assert spec.non_layer_weight_bytes == whole.non_layer_weight_bytes
    assert spec.params_total == whole.params_total
    assert load_model(tmp_path / "split").params_total == whole.params_total  # folder of shards
    shards[-1].unlink()
    with pytest.raises(GpumixError, match="shard"):
        read_gguf(shards[0])


# ---------------------------------------------------------------- malformed files


def test_wrong_magic(tmp_path: Path) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(b"GGML" + bytes(100))
    with pytest.raises(GpumixError, match=r"bad\.gguf.*magic"):
        read_gguf(path)


def test_truncated_real_file(tmp_path: Path, gemma_gguf: Path) -> None:
    path = tmp_path / "cut.gguf"
    with gemma_gguf.open("rb") as src, path.open("wb") as dst:
        dst.write(src.read(2_000_000))  # inside the tokenizer metadata
    with pytest.raises(GpumixError, match=r"cut\.gguf.*truncated"):
        read_gguf(path)


def test_truncated_tensor_data(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "t.gguf")
    size = path.stat().st_size
    with path.open("r+b") as handle:
        handle.truncate(size - 100)
    with pytest.raises(GpumixError, match="truncated"):
        read_gguf(path)


def test_missing_key(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "nokey.gguf", skip_keys=["block_count"])
    with pytest.raises(GpumixError, match=r"nokey\.gguf: missing key llama\.block_count"):
        read_gguf(path)


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(GpumixError, match="not found"):
        read_gguf(tmp_path / "nope.gguf")
    (tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(GpumixError, match="empty"):
        read_gguf(tmp_path / "empty.gguf")


def test_gguf_recognised_by_magic(tmp_path: Path) -> None:
    """A GGUF renamed without the .gguf suffix is still recognised by its magic."""
    src = write_gguf(tmp_path / "m.gguf")
    dst = tmp_path / "model.bin"
    shutil.copy(src, dst)
    assert load_model(dst).n_layers == 3
