"""Synthetic GGUF models: a catalog architecture's exact tensors and metadata, with random weights.

Speed and memory in llama.cpp depend on tensor shapes and types, not on the values, so a file with the real
model's tensor names, shapes, hyper-parameters and vocabulary size measures that architecture honestly without
its weights. This module is the pure part: the layout of a model (tensors + metadata, `synth_layout`) and a
writer for float files (`write_float_gguf`: F32/F16/BF16). Quantised files are made from the F16 one by
llama.cpp's own `llama-quantize` (gpumix.tune.synth), so k-quant recipes are llama.cpp's, not ours.

Layouts follow llama.cpp's loaders (src/models/<arch>.cpp, `load_arch_tensors`) and what its convert_hf_to_gguf.py
writes for each architecture: 1-D tensors (norms, biases) and the MoE router stay F32, matrices take the file type.
The tokenizer is a small-alphabet SentencePiece ("llama") vocabulary padded to the model's vocab_size: llama.cpp
requires the token list to have exactly n_vocab entries (the embedding and output shapes), with scores and types
arrays at least as long; byte tokens <0x00>..<0xFF> make every text tokenizable (byte fallback).
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import gguf
import numpy as np

from gpumix.errors import GpumixError
from gpumix.models.gguf_file import expand_swa_pattern
from gpumix.models.spec import ModelSpec

# Bump when the files this module writes change (the synth cache is keyed by it).
GENERATOR_VERSION = 1
FLOAT_TYPES = ("f32", "f16", "bf16")
WEIGHT_STD = 0.02  # normal(0, 0.02): the usual initialiser scale; values never change speed or memory
CHUNK_ELEMENTS = 1 << 24  # random values generated per step (64 MiB of float32), so RAM use stays flat

T = gguf.MODEL_TENSOR
TensorRole = Literal["matrix", "norm", "bias", "router"]
Progress = Callable[[str, float | None], None]


@dataclass(frozen=True)
class ArchRecipe:
    """What differs between the decoder layouts gpumix can synthesise (llama.cpp src/models/<arch>.cpp)."""

    llama_arch: str  # general.architecture
    qkv_bias: bool = False  # qwen2
    qk_norm: bool = False  # qwen3, gemma3: attn_q_norm / attn_k_norm of head_dim
    post_norms: bool = False  # gemma3: post_attention_norm and post_ffw_norm
    ffn_norm: gguf.MODEL_TENSOR = T.FFN_NORM  # gemma3 calls it FFN_PRE_NORM (same file name, blk.N.ffn_norm)
    vocab_size_key: bool = False  # llama writes llama.vocab_size
    rope_dimension_key: bool = False  # llama writes rope.dimension_count
    always_head_dims: bool = False  # qwen3/gemma3 write attention.key_length/value_length even when implied
    moe: bool = False  # routed experts allowed
    default_rope_theta: float = 10000.0
    default_rms_norm_eps: float = 1e-5
    extra: tuple[tuple[str, float], ...] = ()  # <arch>.<key> float32 values the loader needs


# Defaults are each family's published config.json value (used only when the catalog entry gives none).
RECIPES: dict[str, ArchRecipe] = {
    "llama": ArchRecipe("llama", vocab_size_key=True, rope_dimension_key=True),
    "mistral": ArchRecipe("llama", vocab_size_key=True, rope_dimension_key=True),
    # Mixtral is llama.cpp's llama architecture with expert tensors (convert_hf_to_gguf MixtralModel)
    "mixtral": ArchRecipe("llama", vocab_size_key=True, rope_dimension_key=True, moe=True, default_rope_theta=1e6),
    "qwen2": ArchRecipe("qwen2", qkv_bias=True, default_rope_theta=1e6, default_rms_norm_eps=1e-6),
    "qwen3": ArchRecipe("qwen3", qk_norm=True, always_head_dims=True, default_rope_theta=1e6, default_rms_norm_eps=1e-6),
    "gemma3": ArchRecipe(
        "gemma3", qk_norm=True, post_norms=True, ffn_norm=T.FFN_PRE_NORM, always_head_dims=True,
        default_rope_theta=1e6, default_rms_norm_eps=1e-6,
    ),  # fmt: skip
    # IBM granite-3.0-1b-a400m config.json: logits_scaling 6, residual_multiplier 0.22, embedding_multiplier 12,
    # attention_multiplier 0.015625 (GGUF keys logit_scale, residual_scale, embedding_scale, attention.scale)
    "granitemoe": ArchRecipe(
        "granitemoe", moe=True, default_rms_norm_eps=1e-6,
        extra=(("logit_scale", 6.0), ("residual_scale", 0.22), ("embedding_scale", 12.0), ("attention.scale", 0.015625)),
    ),  # fmt: skip
}


@dataclass(frozen=True)
class SynthTensor:
    name: str
    shape: tuple[int, ...]  # numpy order: the row length (ggml's ne0) last
    role: TensorRole

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class SynthLayout:
    model_id: str
    llama_arch: str
    tensors: tuple[SynthTensor, ...]
    hparams: dict[str, Any] = field(default_factory=dict)  # what the metadata says (for reports and tests)

    @property
    def n_params(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    def float_bytes(self, dtype: str) -> int:
        """File bytes of the tensors when matrices are `dtype` and the rest F32 (headers excluded)."""
        size = _float_item_bytes(dtype)
        return sum(t.n_elements * (size if t.role == "matrix" else 4) for t in self.tensors)


def supported_architectures() -> tuple[str, ...]:
    return tuple(RECIPES)


def recipe_for(spec: ModelSpec) -> ArchRecipe:
    if spec.kind != "llm" or not spec.n_layers or not spec.hidden_size or not spec.vocab_size:
        raise GpumixError(
            f"{spec.id} has no transformer shapes to synthesise"
            + (f" (it is not an LLM but {spec.kind})" if spec.kind != "llm" else " (layers, widths or vocabulary missing)"),
            hint="pick an LLM from `gpumix models`",
        )
    recipe = RECIPES.get(spec.architecture)
    if recipe is None:
        raise GpumixError(
            f"gpumix synth cannot write architecture '{spec.architecture}' ({spec.id}) yet",
            hint=f"supported: {', '.join(RECIPES)}",
        )
    if spec.is_moe and not recipe.moe:
        raise GpumixError(f"{spec.id}: architecture {spec.architecture} with experts is not supported by gpumix synth")
    if spec.kv_heads_per_layer:
        raise GpumixError(f"{spec.id}: per-layer KV head counts are not supported by gpumix synth")
    return recipe


def _name(kind: gguf.MODEL_TENSOR, layer: int | None = None, suffix: str = "weight") -> str:
    base = gguf.TENSOR_NAMES[kind]
    return f"{base.format(bid=layer) if layer is not None else base}.{suffix}"


def _layer_tensors(spec: ModelSpec, recipe: ArchRecipe, i: int) -> list[SynthTensor]:
    h, hd = spec.hidden_size, spec.head_dim
    q_out, kv_out = spec.n_heads * hd, spec.n_kv_heads * hd
    out = [
        SynthTensor(_name(T.ATTN_NORM, i), (h,), "norm"),
        SynthTensor(_name(T.ATTN_Q, i), (q_out, h), "matrix"),
        SynthTensor(_name(T.ATTN_K, i), (kv_out, h), "matrix"),
        SynthTensor(_name(T.ATTN_V, i), (kv_out, h), "matrix"),
    ]
    if recipe.qkv_bias:
        out += [
            SynthTensor(_name(T.ATTN_Q, i, "bias"), (q_out,), "bias"),
            SynthTensor(_name(T.ATTN_K, i, "bias"), (kv_out,), "bias"),
            SynthTensor(_name(T.ATTN_V, i, "bias"), (kv_out,), "bias"),
        ]
    if recipe.qk_norm:
        out += [SynthTensor(_name(T.ATTN_Q_NORM, i), (hd,), "norm"), SynthTensor(_name(T.ATTN_K_NORM, i), (hd,), "norm")]
    out.append(SynthTensor(_name(T.ATTN_OUT, i), (h, q_out), "matrix"))
    if recipe.post_norms:
        out.append(SynthTensor(_name(T.ATTN_POST_NORM, i), (h,), "norm"))
    out.append(SynthTensor(_name(recipe.ffn_norm, i), (h,), "norm"))
    ff = spec.intermediate_size
    if spec.is_moe:
        e = spec.n_experts
        out += [
            SynthTensor(_name(T.FFN_GATE_INP, i), (e, h), "router"),
            SynthTensor(_name(T.FFN_GATE_EXP, i), (e, ff, h), "matrix"),
            SynthTensor(_name(T.FFN_UP_EXP, i), (e, ff, h), "matrix"),
            SynthTensor(_name(T.FFN_DOWN_EXP, i), (e, h, ff), "matrix"),
        ]
    else:
        out += [
            SynthTensor(_name(T.FFN_GATE, i), (ff, h), "matrix"),
            SynthTensor(_name(T.FFN_UP, i), (ff, h), "matrix"),
            SynthTensor(_name(T.FFN_DOWN, i), (h, ff), "matrix"),
        ]
    if recipe.post_norms:
        out.append(SynthTensor(_name(T.FFN_POST_NORM, i), (h,), "norm"))
    return out


def _check_known_tensors(layout_tensors: list[SynthTensor], llama_arch: str) -> None:
    """Every name must be one the gguf package lists for this architecture (guards typos in a recipe)."""
    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == llama_arch)
    known = {gguf.TENSOR_NAMES[t] for t in gguf.MODEL_TENSORS[arch]}
    for tensor in layout_tensors:
        base = tensor.name.rsplit(".", 1)[0]
        generic = ".".join("{bid}" if part.isdigit() else part for part in base.split("."))
        if generic not in known:
            raise AssertionError(f"{tensor.name} is not a {llama_arch} tensor in gguf {gguf.__name__}")


def synth_layout(spec: ModelSpec) -> SynthLayout:
    """The tensors and hyper-parameters of `spec` as llama.cpp loads them (no values)."""
    recipe = recipe_for(spec)
    h = spec.hidden_size
    tensors = [SynthTensor(_name(T.TOKEN_EMBD), (spec.vocab_size, h), "matrix")]
    for i in range(spec.n_layers):
        tensors += _layer_tensors(spec, recipe, i)
    tensors.append(SynthTensor(_name(T.OUTPUT_NORM), (h,), "norm"))
    if not spec.tied_embeddings:
        tensors.append(SynthTensor(_name(T.OUTPUT), (spec.vocab_size, h), "matrix"))
    _check_known_tensors(tensors, recipe.llama_arch)
    hparams = {
        "context_length": spec.context_length or 4096,
        "embedding_length": h,
        "block_count": spec.n_layers,
        "feed_forward_length": spec.intermediate_size,
        "attention.head_count": spec.n_heads,
        "attention.head_count_kv": spec.n_kv_heads,
        "head_dim": spec.head_dim,
        "rope.freq_base": spec.rope_theta or recipe.default_rope_theta,
        "attention.layer_norm_rms_epsilon": spec.rms_norm_eps or recipe.default_rms_norm_eps,
        "vocab_size": spec.vocab_size,
        "expert_count": spec.n_experts if spec.is_moe else 0,
        "expert_used_count": spec.n_experts_active if spec.is_moe else 0,
        "sliding_window": spec.sliding_window if any(spec.swa_layers) else 0,
        **dict(recipe.extra),
    }
    return SynthLayout(spec.id, recipe.llama_arch, tuple(tensors), hparams)


# ---------------------------------------------------------------------------------------------------------------
# metadata


def synthetic_vocab(n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    """(tokens, scores, types) of a SentencePiece vocabulary of exactly n_vocab entries.

    <unk>, <s>, </s>, the 256 byte tokens (byte fallback, so any text tokenizes), printable ASCII with and
    without the SentencePiece space mark, then unique filler pieces. Types: llama.cpp's LLAMA_TOKEN_TYPE_*.
    """
    normal, unknown, control, byte = 1, 2, 3, 6
    tokens = ["<unk>", "<s>", "</s>"]
    types = [unknown, control, control]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [byte] * 256
    chars = [chr(c) for c in range(0x21, 0x7F)]
    pieces = ["\u2581", *chars, *("\u2581" + c for c in chars)]
    fixed = len(tokens)
    if n_vocab < fixed + 1:
        raise GpumixError(f"vocab_size {n_vocab} is too small for a synthetic vocabulary (needs > {fixed})")
    for piece in pieces[: n_vocab - fixed]:
        tokens.append(piece)
        types.append(normal)
    filler = n_vocab - len(tokens)
    tokens += [f"\u2581w{i}" for i in range(filler)]
    types += [normal] * filler
    scores = [0.0] * fixed + [-float(i) for i in range(n_vocab - fixed)]
    return tokens, scores, types


def _add_metadata(writer: gguf.GGUFWriter, spec: ModelSpec, layout: SynthLayout, file_type: int) -> None:
    recipe = recipe_for(spec)
    hp = layout.hparams
    writer.add_name(f"{spec.name} (gpumix synthetic, random weights)")
    writer.add_description(
        f"gpumix synth v{GENERATOR_VERSION}: shapes of catalog model {spec.id}; random weights, synthetic vocabulary"
    )
    writer.add_file_type(file_type)
    writer.add_context_length(hp["context_length"])
    writer.add_embedding_length(hp["embedding_length"])
    writer.add_block_count(hp["block_count"])
    writer.add_feed_forward_length(hp["feed_forward_length"])
    writer.add_head_count(hp["attention.head_count"])
    writer.add_head_count_kv(hp["attention.head_count_kv"])
    writer.add_rope_freq_base(float(hp["rope.freq_base"]))
    writer.add_layer_norm_rms_eps(float(hp["attention.layer_norm_rms_epsilon"]))
    head_dim = spec.head_dim
    if recipe.always_head_dims or head_dim * spec.n_heads != spec.hidden_size:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if recipe.rope_dimension_key:
        writer.add_rope_dimension_count(head_dim)
    if recipe.vocab_size_key:
        writer.add_vocab_size(spec.vocab_size)
    if spec.is_moe:
        writer.add_expert_count(spec.n_experts)
        writer.add_expert_used_count(spec.n_experts_active)
    if hp["sliding_window"]:
        writer.add_sliding_window(int(hp["sliding_window"]))
        default = expand_swa_pattern(spec.n_layers, 6)  # llama.cpp's gemma3 default: load_swa_pattern(ml, 6)
        if tuple(spec.swa_layers) != default:
            writer.add_sliding_window_pattern(list(spec.swa_layers))
    for key, value in recipe.extra:
        writer.add_float32(f"{recipe.llama_arch}.{key}", value)
    tokens, scores, types = synthetic_vocab(spec.vocab_size)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)


# ---------------------------------------------------------------------------------------------------------------
# float writer

_FILE_TYPES = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "bf16": gguf.LlamaFileType.MOSTLY_BF16,
}
_GGML_TYPES = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
               "bf16": gguf.GGMLQuantizationType.BF16}  # fmt: skip


def _float_item_bytes(dtype: str) -> int:
    if dtype not in _GGML_TYPES:
        raise GpumixError(f"'{dtype}' is not a float type", hint=f"use one of {', '.join(FLOAT_TYPES)}")
    return 4 if dtype == "f32" else 2


def _tensor_type(tensor: SynthTensor, dtype: str) -> str:
    return dtype if tensor.role == "matrix" else "f32"


def _encode(values: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "f32":
        return values
    if dtype == "f16":
        return values.astype(np.float16)
    # bfloat16 = the top half of a float32 (round to nearest even)
    bits = values.view(np.uint32)
    rounded = bits + (0x7FFF + ((bits >> 16) & 1))
    return (rounded >> 16).astype(np.uint16)


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, zlib.crc32(name.encode())])))


def _write_values(fout: Any, tensor: SynthTensor, dtype: str, seed: int, on_bytes: Callable[[int], None]) -> None:
    rng = _rng(seed, tensor.name)
    remaining = tensor.n_elements
    while remaining:
        n = min(remaining, CHUNK_ELEMENTS)
        if tensor.role == "norm":
            values = np.ones(n, dtype=np.float32)
        else:
            values = rng.standard_normal(n, dtype=np.float32)
            values *= WEIGHT_STD
        encoded = _encode(values, dtype)
        encoded.tofile(fout)
        on_bytes(encoded.nbytes)
        remaining -= n


def write_float_gguf(
    spec: ModelSpec, path: str | Path, dtype: str = "f16", seed: int = 0, progress: Progress | None = None
) -> Path:
    """Write `spec` as a GGUF whose matrices are `dtype` (f32/f16/bf16) and 1-D tensors F32; random values
    from `seed` (the same seed gives the same bytes). Written to PATH.partial and renamed when complete."""
    _float_item_bytes(dtype)
    layout = synth_layout(spec)
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    say = progress or (lambda _msg, _frac: None)
    writer = gguf.GGUFWriter(partial, layout.llama_arch)
    try:
        _add_metadata(writer, spec, layout, int(_FILE_TYPES[dtype]))
        for tensor in layout.tensors:
            ttype = _tensor_type(tensor, dtype)
            item = _float_item_bytes(ttype)
            np_dtype = np.uint16 if ttype == "bf16" else (np.float16 if ttype == "f16" else np.float32)
            writer.add_tensor_info(
                tensor.name, tensor.shape, np.dtype(np_dtype), tensor.n_elements * item, raw_dtype=_GGML_TYPES[ttype]
            )
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        assert writer.fout is not None
        fout = writer.fout[0]
        writer.write_padding(fout, fout.tell())
        total = layout.float_bytes(dtype)
        done = 0

        def on_bytes(n: int) -> None:
            nonlocal done
            done += n
            say(f"writing {path.name}", done / total if total else 1.0)

        for tensor in layout.tensors:
            ttype = _tensor_type(tensor, dtype)
            _write_values(fout, tensor, ttype, seed, on_bytes)
            writer.write_padding(fout, tensor.n_elements * _float_item_bytes(ttype))
        writer.close()
        os.replace(partial, path)
    except BaseException:
        writer.close()
        partial.unlink(missing_ok=True)
        raise
    return path
