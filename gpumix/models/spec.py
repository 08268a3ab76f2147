"""Typed descriptions of models (architecture, sizes) and quantisation formats."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

ModelKind = Literal["llm", "embedding", "reranker", "image", "audio"]


class QuantSpec(BaseModel):
    """A weight format. bits_per_weight is the true storage cost (GGUF block bytes*8/block weights)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str  # "q4_k_m"
    bits_per_weight: float  # average over the tensors a typical file of this type quantises
    block_weights: int = 1
    block_bytes: float = 0
    compute_dtype: Literal["fp32", "fp16", "bf16", "fp8", "int8", "int4"] = "fp16"
    engines: tuple[str, ...] = ("llama.cpp",)
    aliases: tuple[str, ...] = ()
    source: str = ""

    @property
    def bytes_per_weight(self) -> float:
        return self.bits_per_weight / 8


class ModelSpec(BaseModel):
    """A model architecture: from the catalog (models.yaml), a GGUF file, or an HF config.json."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    name: str
    kind: ModelKind = "llm"
    architecture: str = "llama"
    aliases: tuple[str, ...] = ()
    params_total: float  # count of weights (not billions)
    params_active: float | None = None  # MoE: weights read per token; None = dense
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
    n_experts: int = 0
    n_experts_active: int = 0
    tied_embeddings: bool = False
    # Exact bytes from a file (GGUF tensors / safetensors header); None when derived from params × quant.
    layer_weight_bytes: tuple[int, ...] | None = None
    non_layer_weight_bytes: int | None = None  # token_embd, output, output_norm
    file_quant: str | None = None  # quant read from the file
    path: str | None = None
    # Non-LLM services: resident memory and a speed in their own unit, each with a source.
    service_memory_bytes: int | None = None
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
