"""The Plan: the one JSON artifact that launch, run, gateway and status read.

`gpumix plan FILE -o plan.json` writes it; `read_plan_json` reads it back (every reader uses it). Devices are named
by plan-wide ids (`gpu0`, `cpu0` on a one-machine plan; `HOST/gpu0` with hosts, gpumix.hardware.spec.DeviceRef);
a service lists the ids of its devices in engine order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gpumix.errors import GpumixError, first_validation_problem
from gpumix.estimate.types import MemoryBreakdown
from gpumix.kinds import DeviceKind, Engine, MemorySetting, ModelKind, Objective, PlacementMode

# 2: devices named by plan-wide ids (`id`, services' `devices` are ids), so one plan can span hosts.
PLAN_FORMAT_VERSION: Final = 2
MAX_PLAN_JSON_BYTES = 50_000_000  # a plan for thousands of services is a few MB
RERUN_PLAN_HINT = "re-run `gpumix plan FILE -o plan.json` with this gpumix"

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



class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Predicted(_Frozen):
    decode_tokens_per_s: float | None = None  # one stream
    aggregate_tokens_per_s: float | None = None  # all streams the KV holds at once (`concurrency`)
    prefill_tokens_per_s: float | None = None
    ttft_s: float | None = None
    # 80 % prediction intervals (gpumix.estimate Estimate.*_low/_high: the calibration's leave-GPUs-out bands; the
    # decode upper bound never exceeds the bandwidth ceiling). None where the calibration has no bands.
    decode_tokens_per_s_low: float | None = None
    decode_tokens_per_s_high: float | None = None
    aggregate_tokens_per_s_low: float | None = None
    aggregate_tokens_per_s_high: float | None = None
    prefill_tokens_per_s_low: float | None = None
    prefill_tokens_per_s_high: float | None = None
    ttft_s_low: float | None = None
    ttft_s_high: float | None = None
    # Non-LLM services report their own unit (images/s, audio seconds per second, items/s).
    throughput: float | None = None
    throughput_unit: str | None = None
    # LLMs: the streams the aggregate counts: min(concurrency, what the KV holds at full context), summed over replicas.
    concurrency: int | None = None


class SloCheck(_Frozen):
    metric: str  # "decode_tokens_per_s" | "ttft_ms" | ...
    target: float
    predicted: float | None
    met: bool
    margin: float | None = None  # predicted/target - 1 (positive = headroom)
    predicted_low: float | None = None  # the prediction's 80 % range (Estimate.*_low/_high), where it has one
    predicted_high: float | None = None


class PlannedDevice(_Frozen):
    id: str  # plan-wide device id: gpu0, cpu0, HOST/gpu1 (DeviceRef.id)
    index: int  # CUDA index on its host (PCI bus order); CPU devices -1, -2, ...
    name: str  # catalog display name
    catalog_id: str
    kind: DeviceKind
    host: str | None = None
    uuid: str | None = None
    memory_total_bytes: int
    memory_free_bytes: int
    memory_planned_bytes: int
    bandwidth_utilisation: float = 0.0  # expected fraction of achieved bandwidth in use
    compute_utilisation: float = 0.0
    gbp_per_month: float | None = None
    # What the plan assumed where the file did not say it: a host's CPU and RAM bandwidth (theoretical and achieved,
    # which CPU offload decode uses), the board slot a GPU sits in (gpumix.hardware.platforms).
    assumed: str | None = None


class PlannedService(_Frozen):
    name: str
    model: str  # catalog id (or file stem)
    model_path: str | None = None  # .gguf / config.json when the service named a file
    model_kind: ModelKind = "llm"
    quant: str
    engine: Engine
    mode: PlacementMode
    devices: list[str]  # plan device ids, in engine order (first = main device)
    host: str | None = None  # the one host all its devices are on; None on a host-less plan or across hosts
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
    # LLMs: tokens of KV the placement holds (summed over replicas): llama.cpp -c, vLLM --kv-cache-memory-bytes / the
    # per-token KV size. Between one full `context` and concurrency × context; None in a plan written without it.
    kv_cache_tokens: int | None = None
    max_full_context_sequences: int | None = None  # sequences of `context` tokens that KV holds at once
    kv_unified: bool | None = None  # llama.cpp: one KV pool shared by the slots (--kv-unified); None: not llama.cpp
    # Image services: sd-server's defaults or its low-memory setting (models.yaml `low_memory`: the flags `gpumix launch`
    # adds, the buffers it holds instead); None for other services.
    memory_setting: MemorySetting | None = None
    # Replica mode, one entry per replica process (aligned with `devices`): its share of the service's streams, the
    # streams it serves (its -np / --max-num-seqs), and the tokens of KV it holds.
    replica_shares: list[float] = Field(default_factory=list)
    replica_concurrency: list[int] = Field(default_factory=list)
    replica_kv_cache_tokens: list[int] = Field(default_factory=list)
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


SuggestionKind = Literal["quant", "context", "kv_cache", "cpu_offload", "add_card", "replace_card", "drop_service"]


class Suggestion(_Frozen):
    """A change that would fix a service that does not fit or misses its SLO, re-planned with the planner
    (gpumix.plan.advice): `feasible` = the changed plan is feasible with the service placed and its SLOs met."""

    service: str
    kind: SuggestionKind
    change: str  # one line a person reads
    feasible: bool
    decode_tokens_per_s: float | None = None  # the service's one-stream decode in the changed plan
    gbp_per_month: float | None = None  # the changed plan's cost (None when a card it uses has no price)


class Cost(_Frozen):
    gbp_per_month: float | None = None
    gbp_per_million_tokens: float | None = None


class Plan(_Frozen):
    format_version: Literal[2] = PLAN_FORMAT_VERSION
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
    # What would fix services that do not fit or miss their SLO, each re-planned; cheapest first (gpumix.plan.advice).
    suggestions: list[Suggestion] = Field(default_factory=list)

    def service(self, name: str) -> PlannedService:
        for svc in self.services:
            if svc.name == name:
                return svc
        raise KeyError(name)

    def device(self, device_id: str) -> PlannedDevice:
        """The device with this plan-wide id (KeyError if the plan has none)."""
        for dev in self.devices:
            if dev.id == device_id:
                return dev
        raise KeyError(device_id)

    def devices_of(self, service: PlannedService | str) -> list[PlannedDevice]:
        """A service's devices in engine order."""
        svc = self.service(service) if isinstance(service, str) else service
        return [self.device(device_id) for device_id in svc.devices]

    def hosts(self) -> list[str | None]:
        """The hosts of the plan's devices, in device order (`[None]` for a one-machine plan)."""
        return list(dict.fromkeys(dev.host for dev in self.devices))

    def services_on(self, device_id: str) -> list[PlannedService]:
        return [svc for svc in self.services if device_id in svc.devices]

    @model_validator(mode="after")
    def _devices_are_known(self) -> Plan:
        ids = [dev.id for dev in self.devices]
        if len(set(ids)) != len(ids):
            raise ValueError("two devices have the same id")
        for svc in self.services:
            unknown = [d for d in svc.devices if d not in ids]
            if unknown:
                raise ValueError(f"service {svc.name} names device {unknown[0]!r}, which is not in the device list")
        return self


def read_plan_json(path: Path) -> Plan:
    """Read a plan.json; anything else (unreadable, not JSON, another format version, invalid) is a one-line
    GpumixError saying what to do."""
    try:
        if path.stat().st_size > MAX_PLAN_JSON_BYTES:
            raise GpumixError(f"{path}: larger than {MAX_PLAN_JSON_BYTES} bytes; not a plan.json")
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise GpumixError(f"cannot read plan {path}: {exc.strerror}", hint="run `gpumix plan FILE -o plan.json`") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise GpumixError(f"{path} is not a gpumix plan.json (not JSON)", hint=RERUN_PLAN_HINT) from None
    return plan_from_data(data, str(path))


def plan_from_data(data: object, source: str) -> Plan:
    if not isinstance(data, dict):
        raise GpumixError(f"{source} is not a gpumix plan.json (not a JSON object)", hint=RERUN_PLAN_HINT)
    version = data.get("format_version")
    if version is None:
        raise GpumixError(f"{source} is not a gpumix plan.json (it has no format_version)", hint=RERUN_PLAN_HINT)
    if version != PLAN_FORMAT_VERSION:
        older = isinstance(version, int) and version < PLAN_FORMAT_VERSION
        raise GpumixError(f"{source} was written by {'an older' if older else 'another'} gpumix (plan format "
                          f"{version!r}; this gpumix reads format {PLAN_FORMAT_VERSION})", hint=RERUN_PLAN_HINT)  # fmt: skip
    try:
        return Plan.model_validate(data)
    except ValidationError as exc:
        where, message = first_validation_problem(exc)
        raise GpumixError(f"{source} is not a valid plan.json: {where}: {message}", hint=RERUN_PLAN_HINT) from None
