"""Plan-file services → `Resolved`: each service's model, quant, engine (with the engine rules), objective and
workload. Errors name file:line and field (`gpumix.yaml_input.located_error`)."""

from __future__ import annotations

from dataclasses import dataclass

from gpumix.errors import GpumixError
from gpumix.estimate.types import Workload
from gpumix.kinds import LLM_ENGINES
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
    objective: str
    workload: Workload
    model_path: str | None


def resolve_service(
    entry: ServiceEntry, index: int, spec: PlanSpec, source: str, lines: SourceLines, objective: str | None
) -> Resolved:
    from gpumix.models.catalog import load_model, resolve_quant

    loc = ("services", index)
    try:
        model = load_model(entry.model)
    except GpumixError as exc:
        raise located_error(source, lines, (*loc, "model"), exc.message, exc.hint) from None
    model_path = entry.file or model.path
    if entry.file and model.layer_weight_bytes is None:
        model = _with_file_bytes(model, entry.file)
    if entry.quant:
        try:
            quant = resolve_quant(entry.quant)
        except GpumixError as exc:
            raise located_error(source, lines, (*loc, "quant"), exc.message, exc.hint) from None
    else:
        default = model.file_quant or ("bf16" if entry.engine == "vllm" else "q4_k_m")
        quant = resolve_quant(default if model.kind == "llm" else "f16")
    engine = entry.engine or default_engine(model, quant, entry)
    if model.kind == "llm" and engine == "vllm" and quant.id not in VLLM_QUANTS:
        raise located_error(source, lines, (*loc, "quant"), f"vLLM does not load {quant.id} weights",
                    hint="use engine: llama.cpp for GGUF quants, or quant fp8 / awq-int4 / gptq-int4 / bf16")  # fmt: skip
    if model.kind == "llm" and engine == "llama.cpp" and quant.id in VLLM_ONLY_QUANTS:
        raise located_error(source, lines, (*loc, "engine"), f"llama.cpp cannot load {quant.id} weights",
                    hint="use engine: vllm, or a GGUF quant such as q4_k_m / q8_0")  # fmt: skip
    if model.kind != "llm" and engine in LLM_ENGINES and model.n_layers == 0:
        raise located_error(source, lines, (*loc, "engine"), f"{model.name} is a {model.kind} model, not an LLM")
    context = entry.context or min(model.context_length or DEFAULT_CONTEXT, DEFAULT_CONTEXT)
    if model.context_length and context > model.context_length:
        raise located_error(source, lines, (*loc, "context"),
                    f"{context} tokens is above {model.name}'s trained context of {model.context_length}",
                    hint=f"use context: {model.context_length} or less")  # fmt: skip
    workload = Workload(
        context=context,
        parallel=entry.concurrency,
        engine=engine if engine in LLM_ENGINES else "llama.cpp",
        kv_cache_dtype=entry.kv_cache_dtype or "f16",
        # gpumix launches llama-server with an explicit -np, which turns the unified KV cache off: every slot
        # gets `context` cells of its own (gpumix.launch.commands).
        kv_unified=engine != "llama.cpp",
        embeddings=engine == "llama.cpp" and (entry.task in ("embeddings", "rerank") or model.kind != "llm"),
    )
    return Resolved(
        index=index,
        entry=entry,
        model=model,
        quant=quant,
        engine=engine,
        objective=objective or entry.objective or spec.objective or "latency",
        workload=workload,
        model_path=model_path,
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


