"""Helpers: write small, structurally real GGUF files with gguf.GGUFWriter."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import gguf
import numpy as np

Q = gguf.GGMLQuantizationType


def quant_tensor(rows: int, cols: int, qtype: Q) -> np.ndarray:
    """Raw bytes of a rows x cols tensor stored as qtype (cols = ggml's first dimension)."""
    block_weights, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    return np.zeros((rows, cols // block_weights * block_bytes), dtype=np.uint8)


def write_gguf(
    path: Path,
    arch: str = "llama",
    n_layers: int = 3,
    n_embd: int = 64,
    n_head: int = 4,
    n_head_kv: int | Sequence[int] = 2,
    n_ff: int = 128,
    n_vocab: int = 256,
    qtype: Q = Q.Q4_0,
    tied: bool = False,
    sliding_window: int | None = None,
    swa_pattern: int | Sequence[bool] | None = None,
    n_experts: int = 0,
    n_experts_used: int = 0,
    file_type: int | None = None,
    split_max_tensors: int = 0,
    skip_keys: Sequence[str] = (),
) -> Path:
    """A structurally real GGUF (zero weights) with llama.cpp's tensor names."""
    writer = gguf.GGUFWriter(path, arch, split_max_tensors=split_max_tensors)
    keys = {
        "block_count": lambda: writer.add_block_count(n_layers),
        "embedding_length": lambda: writer.add_embedding_length(n_embd),
        "head_count": lambda: writer.add_head_count(n_head),
        "head_count_kv": lambda: writer.add_head_count_kv(n_head_kv),
        "feed_forward_length": lambda: writer.add_feed_forward_length(n_ff),
        "context_length": lambda: writer.add_context_length(4096),
    }
    for key, add in keys.items():
        if key not in skip_keys:
            add()
    writer.add_name(f"tiny {arch}")
    if file_type is not None:
        writer.add_file_type(file_type)
    if sliding_window:
        writer.add_sliding_window(sliding_window)
    if swa_pattern is not None:
        writer.add_sliding_window_pattern(swa_pattern)
    if n_experts:
        writer.add_expert_count(n_experts)
        writer.add_expert_used_count(n_experts_used)
    writer.add_token_list([f"t{i}" for i in range(n_vocab)])
    kv_max = max(n_head_kv) if not isinstance(n_head_kv, int) else n_head_kv
    head_dim = n_embd // n_head
    writer.add_tensor("token_embd.weight", quant_tensor(n_vocab, n_embd, Q.Q8_0), raw_dtype=Q.Q8_0)
    for i in range(n_layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.attn_q.weight", quant_tensor(n_embd, n_embd, qtype), raw_dtype=qtype)
        writer.add_tensor(f"blk.{i}.attn_k.weight", quant_tensor(kv_max * head_dim, n_embd, qtype), raw_dtype=qtype)
        writer.add_tensor(f"blk.{i}.attn_v.weight", quant_tensor(kv_max * head_dim, n_embd, qtype), raw_dtype=qtype)
        writer.add_tensor(f"blk.{i}.attn_output.weight", quant_tensor(n_embd, n_embd, qtype), raw_dtype=qtype)
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        if n_experts:
            writer.add_tensor(f"blk.{i}.ffn_gate_inp.weight", np.zeros((n_experts, n_embd), dtype=np.float32))
            for part in ("gate", "up"):
                t = np.zeros((n_experts, n_ff, n_embd // 32 * 18), dtype=np.uint8)
                writer.add_tensor(f"blk.{i}.ffn_{part}_exps.weight", t, raw_dtype=Q.Q4_0)
            t = np.zeros((n_experts, n_embd, n_ff // 32 * 18), dtype=np.uint8)
            writer.add_tensor(f"blk.{i}.ffn_down_exps.weight", t, raw_dtype=Q.Q4_0)
        else:
            for part, (rows, cols) in {"gate": (n_ff, n_embd), "up": (n_ff, n_embd), "down": (n_embd, n_ff)}.items():
                writer.add_tensor(f"blk.{i}.ffn_{part}.weight", quant_tensor(rows, cols, qtype), raw_dtype=qtype)
    writer.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    if not tied:
        out_type = Q.Q6_K if n_embd % 256 == 0 else Q.Q8_0
        writer.add_tensor("output.weight", quant_tensor(n_vocab, n_embd, out_type), raw_dtype=out_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
