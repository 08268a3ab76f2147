"""Inputs and outputs of the estimator: what runs (Workload), where (Placement), and the answer (Estimate)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from gpumix.hardware.spec import Device
from gpumix.kinds import Engine, PlacementMode, Topology


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)


class MemoryBreakdown(_Frozen):
    """Memory one device holds for one service, by what it is for."""

    weights_bytes: int
    kv_cache_bytes: int
    compute_bytes: int
    overhead_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.compute_bytes + self.overhead_bytes


class Workload(_Frozen):
    """How the model is run: context, parallel sequences, engine and its knobs."""

    context: int = 4096  # tokens of KV per sequence (the longest a request may grow)
    parallel: int = 1  # concurrent sequences (llama.cpp -np slots, vLLM max-num-seqs)
    # The KV budget: tokens of KV the process holds, shared by its sequences (vLLM's paged KV; llama.cpp's unified
    # KV). None = context × parallel. Ignored by llama.cpp without a unified KV (each slot holds `context` cells).
    kv_tokens: int | None = Field(default=None, ge=1)
    engine: Engine = "llama.cpp"
    kv_cache_dtype: str = "f16"  # f32 | f16 | bf16 | q8_0 | q4_0 | fp8 ...
    ubatch: int = 512  # llama.cpp -ub: sets the compute buffer
    prompt_tokens: int = 512  # for prefill speed and TTFT
    kv_unified: bool = True  # llama-server default with auto -np: one KV shared by all slots
    flash_attention: bool = True
    gpu_memory_utilization: float | None = None  # vLLM: fraction of each GPU it claims
    embeddings: bool = False  # llama-server --embeddings: every ubatch token is an output


class Links(_Frozen):
    """Interconnect between devices (defaults: PCIe 4.0 x16, no NVLink)."""

    pcie_gen: int = 4
    pcie_lanes: tuple[int, ...] = ()  # per device; empty = x16 everywhere
    nvlink: bool = False
    nvlink_gb_per_s: float = 0.0  # per direction, when nvlink
    topology: Topology = "PHB"
    network_gb_per_s: float | None = None  # devices on different hosts (RPC): Ethernet/IB bandwidth
    network_latency_s: float = 0.0


class Placement(_Frozen):
    """Where the model's layers live. `layers[i]` layers on `devices[i]`; sum = model layers."""

    mode: PlacementMode
    devices: tuple[Device, ...]
    layers: tuple[int, ...] = ()  # empty for single / replica / tensor parallel: derived


class DeviceEstimate(_Frozen):
    device_index: int
    name: str
    layers: int
    memory: MemoryBreakdown
    memory_bytes: int
    memory_free_bytes: int
    memory_usable_bytes: int  # free − margin (gpumix.estimate.memory.usable_bytes)
    fits: bool  # memory_bytes ≤ memory_usable_bytes: the same test the planner applies
    shortfall_bytes: int  # > 0: how much more memory this device would need (against free − margin)
    decode_s_per_token: float  # this device's share of one token's decode time (incl. its fixed overhead)
    bandwidth_bound_s_per_token: float  # bytes it reads per token / its peak bandwidth


class Estimate(_Frozen):
    fits: bool
    mode: PlacementMode
    devices: tuple[DeviceEstimate, ...]
    decode_tokens_per_s: float  # one stream
    aggregate_tokens_per_s: float  # all `parallel` streams together
    prefill_tokens_per_s: float
    ttft_s: float
    # Physics ceiling: no prediction may beat bytes read per token ÷ peak bandwidth.
    bandwidth_bound_tokens_per_s: float
    link_s_per_token: float = 0.0
    notes: tuple[str, ...] = Field(default_factory=tuple)
    # 80 % prediction intervals from the calibration's leave-GPUs-out bands (Calibration.bands); None without
    # bands or speeds. decode_tokens_per_s_high never exceeds bandwidth_bound_tokens_per_s, and the aggregate's
    # upper bound is capped by the same factor.
    decode_tokens_per_s_low: float | None = None
    decode_tokens_per_s_high: float | None = None
    aggregate_tokens_per_s_low: float | None = None
    aggregate_tokens_per_s_high: float | None = None
    prefill_tokens_per_s_low: float | None = None
    prefill_tokens_per_s_high: float | None = None
    ttft_s_low: float | None = None
    ttft_s_high: float | None = None
