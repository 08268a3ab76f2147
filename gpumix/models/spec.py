"""Typed descriptions of models (architecture, sizes) and quantisation formats."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from gpumix.kinds import Engine, ModelKind

ComputeDtype = Literal["fp32", "fp16", "bf16", "fp8", "int8", "int4"]
# Units an engine's own log or document states a size in: whisper.cpp prints MB (10^6 bytes), llama.cpp and
# stable-diffusion.cpp print "MB" computed as bytes / 1024 / 1024 (MiB). A figure keeps its source's unit so a reader
# can find it there.
SizeUnit = Literal["B", "MB", "MiB", "GB", "GiB"]
SIZE_UNIT_BYTES: dict[str, int] = {"B": 1, "MB": 10**6, "MiB": 2**20, "GB": 10**9, "GiB": 2**30}
# What a part of a service's memory is: extra weight files (a separate VAE), caches (whisper's KV), or working
# buffers (compute graphs, activations).
BufferKind = Literal["weights", "kv", "compute"]


class QuantSpec(BaseModel):
    """A weight format. bits_per_weight is the true storage cost (GGUF block bytes*8/block weights)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str  # "q4_k_m"
    bits_per_weight: float  # average over the tensors a typical file of this type quantises
    block_weights: int = 1
    block_bytes: float = 0
    compute_dtype: ComputeDtype = "fp16"
    engines: tuple[str, ...] = ("llama.cpp",)
    aliases: tuple[str, ...] = ()
    source: str = ""
    # Whole-file average on a real model (tensors kept at higher precision included, e.g. output.weight in Q6_K);
    # None when not measured. bits_per_weight stays the block cost for single-type formats.
    file_bits_per_weight: float | None = None
    # Formats that leave the token embedding and lm_head unquantised (vLLM FP8/AWQ/GPTQ checkpoints keep them in
    # 16-bit): then bits_per_weight covers the transformer layers and this the non-layer tensors.
    embedding_bits_per_weight: float | None = None

    @property
    def bytes_per_weight(self) -> float:
        return self.bits_per_weight / 8


class EngineBuffer(BaseModel):
    """One allocation an engine makes for a service beyond the model's own weights, at the engine's defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    kind: BufferKind = "compute"
    size: float  # in `unit`, as the source states it
    unit: SizeUnit
    source: str  # where the figure comes from; "ESTIMATE: ..." when derived without a measurement

    @property
    def size_bytes(self) -> int:
        return round(self.size * SIZE_UNIT_BYTES[self.unit])


class LowMemorySetting(BaseModel):
    """An engine setting that holds less for a service at a cost in speed (stable-diffusion.cpp's flash attention in
    the diffusion model and tiled VAE decode): the flags that select it and the engine buffers it holds instead of
    ServiceMemory.buffers (a full list, weight files included). The planner offers it when the default does not fit;
    the speed cost is stated in `speed_note` (the catalog's reference_speed is for the default setting)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    setting: str  # "1024x1024, sd-server --diffusion-fa --vae-tiling --vae-conv-direct"
    args: tuple[str, ...]  # the engine flags that select it, in order (gpumix.launch.commands renders them)
    buffers: tuple[EngineBuffer, ...] = ()
    source: str  # where the flag names come from
    speed_note: str  # what it costs in speed, sourced or "not measured"


class ServiceMemory(BaseModel):
    """What a non-LLM service holds on its device: the model's weights (params_total × bytes of `weights_dtype`) plus
    the engine's own buffers at `setting` (plus what gpumix.estimate.memory computes from shapes for the engine, e.g.
    TEI's activations) plus the CUDA context. Every figure cites its source; none is a rounded total."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    engine: Engine  # the engine gpumix launches for this model; the buffers are that engine's
    weights_dtype: str  # element type the engine holds the weights in on a GPU (f16, bf16, q8_0, f32)
    cpu_weights_dtype: str | None = None  # when a CPU run holds another type (TEI: float32 on CPU)
    setting: str  # the engine setting the buffers are for ("1024x1024, sd-server defaults")
    buffers: tuple[EngineBuffer, ...] = ()
    source: str = ""  # where params_total and weights_dtype come from
    low_memory: LowMemorySetting | None = None  # a setting that holds less (plan files: `memory: low|default|auto`)


class ModelSpec(BaseModel):
    """A model architecture: from the catalog (models.yaml), a GGUF file, or an HF config.json."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    name: str
    kind: ModelKind = "llm"
    architecture: str = "llama"
    aliases: tuple[str, ...] = ()
    params_total: float  # count of weights (not billions)
    # MoE: all weights except the inactive experts (token-embedding table included, the convention of Mixtral's
    # "12.9B active"; OpenAI's "3.6B active" for gpt-oss-20b leaves the 0.58B embedding out). None = dense.
    params_active: float | None = None
    n_layers: int = 0
    hidden_size: int = 0
    n_heads: int = 0
    n_kv_heads: int = 0
    head_dim: int = 0  # key/value head dimension
    intermediate_size: int = 0
    vocab_size: int = 0
    context_length: int = 0
    sliding_window: int | None = None  # tokens a sliding-window layer attends to
    # Per layer: True = sliding-window (local) attention. Empty = all layers global.
    swa_layers: tuple[bool, ...] = ()
    # Per layer KV heads when the file gives an array (0 = a layer without KV cache); empty = n_kv_heads everywhere.
    kv_heads_per_layer: tuple[int, ...] = ()
    n_experts: int = 0
    n_experts_active: int = 0
    tied_embeddings: bool = False
    # Hyper-parameters that change no size or speed; `gpumix synth` writes them into synthetic GGUFs (config.json's
    # rope_theta and rms_norm_eps). None = the architecture's usual value (gpumix.models.synth).
    rope_theta: float | None = None
    rms_norm_eps: float | None = None
    # Exact bytes from a file (GGUF tensors / safetensors header); None when derived from params × quant.
    layer_weight_bytes: tuple[int, ...] | None = None
    non_layer_weight_bytes: int | None = None  # token_embd, output, output_norm
    file_quant: str | None = None  # quant read from the file
    path: str | None = None
    # Non-LLM services: resident memory in parts (weights, engine buffers) and a speed in their own unit, with sources.
    service_memory: ServiceMemory | None = None
    speed_unit: str | None = None  # "images/s", "audio s/s", "embeddings/s"
    reference_speed: float | None = None  # in speed_unit on reference_gpu
    reference_gpu: str | None = None
    source: str = ""

    @property
    def active_params(self) -> float:
        return self.params_active if self.params_active is not None else self.params_total

    @property
    def is_moe(self) -> bool:
        return self.n_experts > 1
