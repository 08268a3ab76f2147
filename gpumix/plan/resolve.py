"""Plan-file services → `Resolved`: each service's model, quant, engine (with the engine rules), objective and
workload. Errors name file:line and field (`gpumix.yaml_input.located_error`)."""

from __future__ import annotations

from dataclasses import dataclass

from gpumix.errors import GpumixError
from gpumix.estimate.types import Workload
from gpumix.kinds import LLM_ENGINES, Objective
from gpumix.models.spec import ModelSpec, QuantSpec
from gpumix.plan.result import default_endpoints
from gpumix.plan.spec import PlanSpec, ServiceEntry
from gpumix.yaml_input import SourceLines, located_error

DEFAULT_CONTEXT = 4096
VLLM_QUANTS = {"fp8", "awq-int4", "gptq-int4", "bf16", "f16"}  # weight formats vLLM loads from HF repos
VLLM_ONLY_QUANTS = {"fp8", "awq-int4", "gptq-int4"}


@dataclass
class Resolved:
    """A service of the plan file with its model, quant, engine and workload resolved."""

    index: int
    entry: ServiceEntry
    model: ModelSpec
    quant: QuantSpec
    engine: str
    objective: Objective
    workload: Workload
    model_path: str | None


def resolve_service(
    entry: ServiceEntry, index: int, spec: PlanSpec, source: str, lines: SourceLines, objective: Objective | None
) -> Resolved:
    """One service of the plan file resolved; errors name file:line and the service's field."""
    at = _Where(source, lines, ("services", index))
    model, quant = _model_and_quant(entry, at)
    engine = entry.engine or default_engine(model, quant, entry)
    _check_engine(model, quant, engine, at)
    _check_memory_setting(entry, model, at)
    return Resolved(
        index=index,
        entry=entry,
        model=model,
        quant=quant,
        engine=engine,
        objective=objective or entry.objective or spec.objective or "latency",
        workload=_workload(entry, model, engine, _context(entry, model, at), at),
        model_path=entry.file or model.path,
    )


@dataclass(frozen=True)
class _Where:
    source: str
    lines: SourceLines
    loc: tuple[str | int, ...]

    def error(self, key: str, message: str, hint: str | None = None) -> GpumixError:
        return located_error(self.source, self.lines, (*self.loc, key), message, hint)


def _model_and_quant(entry: ServiceEntry, at: _Where) -> tuple[ModelSpec, QuantSpec]:
    from gpumix.models.catalog import load_model, resolve_quant

    try:
        model = load_model(entry.model)
    except GpumixError as exc:
        raise at.error("model", exc.message, exc.hint) from None
    if entry.file and model.layer_weight_bytes is None:
        model = _with_file_bytes(model, entry.file)
    if not entry.quant:
        default = model.file_quant or ("bf16" if entry.engine == "vllm" else "q4_k_m")
        return model, resolve_quant(default if model.kind == "llm" else "f16")
    try:
        return model, resolve_quant(entry.quant)
    except GpumixError as exc:
        raise at.error("quant", exc.message, exc.hint) from None


def _check_engine(model: ModelSpec, quant: QuantSpec, engine: str, at: _Where) -> None:
    if model.kind == "llm" and engine == "vllm" and quant.id not in VLLM_QUANTS:
        raise at.error("quant", f"vLLM does not load {quant.id} weights",
                       hint="use engine: llama.cpp for GGUF quants, or quant fp8 / awq-int4 / gptq-int4 / bf16")  # fmt: skip
    if model.kind == "llm" and engine == "llama.cpp" and quant.id in VLLM_ONLY_QUANTS:
        raise at.error("engine", f"llama.cpp cannot load {quant.id} weights",
                       hint="use engine: vllm, or a GGUF quant such as q4_k_m / q8_0")  # fmt: skip
    if model.kind != "llm" and engine in LLM_ENGINES and model.n_layers == 0:
        raise at.error("engine", f"{model.name} is a {model.kind} model, not an LLM")


def _check_memory_setting(entry: ServiceEntry, model: ModelSpec, at: _Where) -> None:
    from gpumix.estimate.memory import has_low_memory_setting

    if entry.memory == "auto":
        return
    if model.kind != "image":
        kind = {"llm": "an LLM", "embedding": "an embedding model", "reranker": "a reranker", "audio": "an audio model"}
        raise at.error("memory", f"memory: {entry.memory} is an image-service setting; {model.name} is "
                       f"{kind.get(model.kind, model.kind)}",
                       hint="remove it (only image services have a low-memory setting)")  # fmt: skip
    if entry.memory == "low" and not has_low_memory_setting(model):
        raise at.error("memory", f"{model.name} has no low-memory setting in the catalog",
                       hint="use memory: default or auto (models.yaml `low_memory` lists the models that have one)")  # fmt: skip


def _context(entry: ServiceEntry, model: ModelSpec, at: _Where) -> int:
    context = entry.context or min(model.context_length or DEFAULT_CONTEXT, DEFAULT_CONTEXT)
    if model.context_length and context > model.context_length:
        raise at.error("context", f"{context} tokens is above {model.name}'s trained context of {model.context_length}",
                       hint=f"use context: {model.context_length} or less")  # fmt: skip
    return context


def _workload(entry: ServiceEntry, model: ModelSpec, engine: str, context: int, at: _Where) -> Workload:
    if entry.kv_unified is False and engine != "llama.cpp":
        raise at.error("kv_unified", f"kv_unified: false is a llama.cpp setting; {engine} does not have it",
                       hint="remove it (vLLM's paged KV cache is always shared by its sequences)")  # fmt: skip
    return Workload(
        context=context,
        parallel=entry.concurrency,
        engine=engine if engine in LLM_ENGINES else "llama.cpp",
        kv_cache_dtype=entry.kv_cache_dtype or "f16",
        # llama-server is launched with --kv-unified (one KV pool the -np slots share, sized by the planner) unless
        # the service says `kv_unified: false` (every slot keeps `context` cells: gpumix.launch.commands).
        kv_unified=entry.kv_unified is not False,
        embeddings=engine == "llama.cpp" and (entry.task in ("embeddings", "rerank") or model.kind != "llm"),
    )


def _with_file_bytes(model: ModelSpec, ref: str) -> ModelSpec:
    """The catalog model with the exact tensor bytes of the file the service names (when it is on this machine;
    a plan for another machine keeps the catalog's parameters × quant estimate)."""
    from gpumix.models.catalog import load_model
    from gpumix.models.files import resolve_file_ref

    try:
        path = resolve_file_ref(ref)
        if not path.is_file() or path.suffix.lower() != ".gguf":
            return model
        exact = load_model(str(path))
    except GpumixError:
        return model
    if exact.n_layers != model.n_layers:
        return model
    return model.model_copy(update={
        "layer_weight_bytes": exact.layer_weight_bytes, "non_layer_weight_bytes": exact.non_layer_weight_bytes,
        "file_quant": exact.file_quant, "path": str(path),
    })  # fmt: skip


def default_engine(model: ModelSpec, quant: QuantSpec, entry: ServiceEntry) -> str:
    if model.kind in ("embedding", "reranker"):
        return "tei"
    if model.kind == "audio":
        return "whisper"
    if model.kind == "image":
        return "image"
    if quant.id in VLLM_ONLY_QUANTS or entry.mode in ("tensor_parallel", "pipeline_parallel"):
        return "vllm"
    return "llama.cpp"


def endpoints_for(model: ModelSpec, task: str | None = None) -> list[str]:
    """What the service answers: by its model's kind, or by `task` for an LLM file served as embeddings/rerank."""
    if task == "embeddings" or model.kind == "embedding":
        return list(default_endpoints("embedding"))
    if task == "rerank" or model.kind == "reranker":
        return list(default_endpoints("reranker"))
    return list(default_endpoints(model.kind, model.id))


