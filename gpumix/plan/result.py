"""The Plan: the one JSON artifact that launch, run, gateway and status read.

`gpumix plan FILE -o plan.json` writes it; `Plan.model_validate_json` reads it back.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from gpumix.estimate.types import MemoryBreakdown  # the estimator's type; the plan records it per device

PLAN_FORMAT_VERSION = 1

# OpenAI-compatible paths a service answers; launch, exports and the gateway all read them from the plan.
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
RERANK = "/v1/rerank"
IMAGES = "/v1/images/generations"
TRANSCRIPTIONS = "/v1/audio/transcriptions"
MODERATIONS = "/v1/moderations"
ENDPOINTS_BY_KIND: dict[str, tuple[str, ...]] = {
    "llm": (CHAT, COMPLETIONS),
    "embedding": (EMBEDDINGS,),
    "reranker": (RERANK,),
    "image": (IMAGES,),
    "audio": (TRANSCRIPTIONS,),
}
_GUARD_HINTS = ("guard", "shield", "moderat")  # safety classifiers (Llama Guard, ShieldGemma) also moderate


def default_endpoints(kind: str, *names: str) -> tuple[str, ...]:
    """What a service of this kind answers; an LLM whose name or model says it is a guard also serves moderations."""
    endpoints = ENDPOINTS_BY_KIND[kind]
    if kind == "llm" and any(hint in " ".join(names).lower() for hint in _GUARD_HINTS):
        endpoints += (MODERATIONS,)
    return endpoints

Engine = Literal["llama.cpp", "vllm", "tei", "whisper", "image"]
Mode = Literal["single", "layer_split", "tensor_parallel", "pipeline_parallel", "replica", "cpu_offload"]
Objective = Literal["latency", "throughput"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Predicted(_Frozen):
    decode_tokens_per_s: float | None = None  # one stream
    aggregate_tokens_per_s: float | None = None  # all streams at the service's concurrency
    prefill_tokens_per_s: float | None = None
    ttft_s: float | None = None
    # Non-LLM services report their own unit (images/s, audio seconds per second, items/s).
    throughput: float | None = None
    throughput_unit: str | None = None


class SloCheck(_Frozen):
    metric: str  # "decode_tokens_per_s" | "ttft_ms" | ...
    target: float
    predicted: float | None
    met: bool
    margin: float | None = None  # predicted/target - 1 (positive = headroom)


class PlannedDevice(_Frozen):
    index: int  # CUDA index (PCI bus order); CPU devices -1, -2, ...
    name: str  # catalog display name
    catalog_id: str
    kind: Literal["gpu", "cpu"]
    host: str | None = None
    uuid: str | None = None
    memory_total_bytes: int
    memory_free_bytes: int
    memory_planned_bytes: int
    bandwidth_utilisation: float = 0.0  # expected fraction of achieved bandwidth in use
    compute_utilisation: float = 0.0
    gbp_per_month: float | None = None


class PlannedService(_Frozen):
    name: str
    model: str  # catalog id (or file stem)
    model_path: str | None = None  # .gguf / config.json when the service named a file
    model_kind: Literal["llm", "embedding", "reranker", "image", "audio"] = "llm"
    quant: str
    engine: Engine
    mode: Mode
    devices: list[int]  # plan device indices, in engine order (first = main device)
    host: str | None = None
    split: list[float] = Field(default_factory=list)  # fraction of layers per device (sums to 1)
    layers: list[int] = Field(default_factory=list)  # layers per device when split
    tensor_split: list[float] = Field(default_factory=list)  # llama.cpp -ts values
    memory_bytes: list[int] = Field(default_factory=list)  # per device in `devices`
    memory_breakdown: list[MemoryBreakdown] = Field(default_factory=list)
    n_gpu_layers: int | None = None  # llama.cpp -ngl (CPU offload keeps the rest on the CPU)
    context: int = 4096
    concurrency: int = 1
    replicas: int = 1
    threads: int | None = None  # CPU threads per process (llama.cpp -t); None = engine default
    kv_cache_dtype: str | None = None  # llama.cpp -ctk/-ctv, vLLM --kv-cache-dtype; None = engine default (f16/auto)
    objective: Objective = "latency"
    endpoints: list[str] = Field(default_factory=list)  # e.g. ["/v1/chat/completions", "/v1/completions"]
    fallback: str | None = None  # another service's name
    predicted: Predicted = Predicted()
    slo: list[SloCheck] = Field(default_factory=list)
    gbp_per_million_tokens: float | None = None

    def served_endpoints(self) -> tuple[str, ...]:
        """The plan's list, else what the service's kind answers (plan.json written by hand may omit it)."""
        return tuple(self.endpoints) or default_endpoints(self.model_kind, self.name, self.model)


class Warning_(_Frozen):
    code: str  # stable, e.g. "GPX003-slow-main-gpu"
    message: str
    service: str | None = None
    severity: Literal["info", "warning", "error"] = "warning"


class Cost(_Frozen):
    gbp_per_month: float | None = None
    gbp_per_million_tokens: float | None = None


class Plan(_Frozen):
    format_version: int = PLAN_FORMAT_VERSION
    source: str | None = None  # the plan file it was made from
    feasible: bool
    optimal: bool = False  # the assignment solver proved optimality
    solver: str | None = None
    reasons: list[str] = Field(default_factory=list)
    devices: list[PlannedDevice]
    services: list[PlannedService]
    warnings: list[Warning_] = Field(default_factory=list)
    cost: Cost = Cost()
    calibration: str | None = None  # calibration file used

    def service(self, name: str) -> PlannedService:
        for svc in self.services:
            if svc.name == name:
                return svc
        raise KeyError(name)

    def device(self, index: int) -> PlannedDevice:
        for dev in self.devices:
            if dev.index == index:
                return dev
        raise KeyError(index)
