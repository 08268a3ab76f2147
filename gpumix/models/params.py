"""Count a transformer's weights from its shapes (what an HF config.json or the catalog gives).

Used by the HF config reader and to cross-check the catalog's published totals. The count is exact for the
architectures below (it reproduces e.g. Llama 3 8B's 8,030,261,248); unknown architectures get the llama layout.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ArchTraits:
    """What differs between decoder layouts, as far as weight counts go."""

    norms_per_layer: int = 2  # RMSNorm vectors of size hidden per layer (llama: input + post-attention)
    qkv_bias: bool = False  # Qwen2: biases on q, k, v
    o_bias: bool = False  # gpt-oss: bias on the output projection too
    qk_norm: bool = False  # Gemma 3: RMSNorm over each head's q and k (head_dim each)
    attn_sinks: bool = False  # gpt-oss: one learned sink logit per head
    expert_bias: bool = False  # gpt-oss: biases on expert projections and on the router


# Source for each: the modeling_<arch>.py of HF transformers (parameter shapes in __init__).
ARCH_TRAITS: dict[str, ArchTraits] = {
    "llama": ArchTraits(),
    "mistral": ArchTraits(),
    "mixtral": ArchTraits(),
    "qwen2": ArchTraits(qkv_bias=True),
    "qwen3": ArchTraits(qk_norm=True),
    "granitemoe": ArchTraits(),
    "gemma3": ArchTraits(norms_per_layer=4, qk_norm=True),
    "gemma2": ArchTraits(norms_per_layer=4),
    "gpt-oss": ArchTraits(qkv_bias=True, o_bias=True, attn_sinks=True, expert_bias=True),
}


@dataclass(frozen=True)
class Shapes:
    architecture: str
    n_layers: int
    hidden_size: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate_size: int  # per expert for MoE
    vocab_size: int
    tied_embeddings: bool = False
    n_experts: int = 0
    n_experts_active: int = 0


def attention_params(s: Shapes, traits: ArchTraits) -> int:
    q_out = s.n_heads * s.head_dim
    kv_out = s.n_kv_heads * s.head_dim
    weights = s.hidden_size * (q_out + 2 * kv_out) + q_out * s.hidden_size
    bias = (q_out + 2 * kv_out) * traits.qkv_bias + s.hidden_size * traits.o_bias
    qk_norm = 2 * s.head_dim * traits.qk_norm
    sinks = s.n_heads * traits.attn_sinks
    return weights + bias + qk_norm + sinks


def expert_params(s: Shapes, traits: ArchTraits) -> int:
    """One gated MLP (gate, up, down)."""
    bias = (2 * s.intermediate_size + s.hidden_size) * traits.expert_bias
    return 3 * s.hidden_size * s.intermediate_size + bias


def router_params(s: Shapes, traits: ArchTraits) -> int:
    if s.n_experts <= 1:
        return 0
    return s.hidden_size * s.n_experts + s.n_experts * traits.expert_bias


def count_params(s: Shapes) -> tuple[int, int]:
    """(total, active): active = total minus the weights of experts a token does not use."""
    traits = ARCH_TRAITS.get(s.architecture, ArchTraits())
    n_experts = max(s.n_experts, 1)
    per_layer_shared = attention_params(s, traits) + router_params(s, traits) + traits.norms_per_layer * s.hidden_size
    per_layer = per_layer_shared + n_experts * expert_params(s, traits)
    embeddings = s.vocab_size * s.hidden_size * (1 if s.tied_embeddings else 2)
    total = s.n_layers * per_layer + embeddings + s.hidden_size  # + final norm
    inactive = s.n_layers * max(n_experts - max(s.n_experts_active, 1), 0) * expert_params(s, traits)
    return total, total - inactive
