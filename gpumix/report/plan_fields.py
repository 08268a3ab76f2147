"""Reading a Plan for display: the one place where the report and the dashboard touch the Plan JSON's field names.

Every view (the HTML report, its PNGs, the gateway's live dashboard) reads a plan through these functions, on
the plan's JSON form (`Plan.model_dump(mode="json")` of a format-2 plan: devices named by id), so a change of the
plan format is adapted here alone. Fields that later planners add are optional and read as None/empty when
absent: `services[].kv_cache_tokens`, `max_full_context_sequences`, `replica_shares`, `replica_concurrency`,
prediction ranges (`predicted.<metric>_low` / `_high`, and `predicted_low` / `predicted_high` on an SLO check),
and the plan's `suggestions` (`{service, kind, change, feasible, decode_tokens_per_s, gbp_per_month}`).

Light on purpose (stdlib only at import): the gateway imports it.
"""

from __future__ import annotations

from typing import Any

Doc = dict[str, Any]  # a plan, as JSON
BREAKDOWN_PARTS = ("weights", "kv_cache", "compute", "overhead")
LLM_METRICS = ("decode_tokens_per_s", "aggregate_tokens_per_s", "prefill_tokens_per_s", "ttft_s")


# ---- the plan as a whole ---------------------------------------------------------------------------------------
def format_version(doc: Doc) -> int | None:
    value = doc.get("format_version")
    return value if isinstance(value, int) else None


def summary(doc: Doc) -> dict[str, Any]:
    cost = doc.get("cost") or {}
    return {
        "source": doc.get("source"),
        "feasible": bool(doc.get("feasible")),
        "optimal": bool(doc.get("optimal")),
        "solver": doc.get("solver"),
        "reasons": list(doc.get("reasons") or []),
        "gbp_per_month": cost.get("gbp_per_month"),
        "gbp_per_million_tokens": cost.get("gbp_per_million_tokens"),
        "calibration": doc.get("calibration"),
    }


def warnings(doc: Doc) -> list[dict[str, Any]]:
    return [
        {"code": w.get("code", ""), "message": w.get("message", ""), "service": w.get("service"),
         "severity": w.get("severity", "warning")}
        for w in doc.get("warnings") or []
    ]  # fmt: skip


def suggestions(doc: Doc) -> list[dict[str, Any]]:
    """The planner's re-planned advice for services that do not fit or miss an SLO, as given (plan `suggestions`:
    service, kind, change, feasible, decode_tokens_per_s, gbp_per_month)."""
    return [dict(s) for s in doc.get("suggestions") or [] if isinstance(s, dict)]


# ---- devices ---------------------------------------------------------------------------------------------------
def devices(doc: Doc) -> list[Doc]:
    return list(doc.get("devices") or [])


def device_id(dev: Doc) -> str:
    """The plan-wide id ("gpu0", "cpu0", "alpha/gpu1")."""
    return str(dev.get("id", "?"))


def device_label(dev: Doc) -> str:
    return f"{device_id(dev)} {dev.get('name', '?')}"


def device_memory(dev: Doc) -> dict[str, int]:
    total = int(dev.get("memory_total_bytes") or 0)
    return {
        "total": total,
        "free": int(dev.get("memory_free_bytes") or total),
        "planned": int(dev.get("memory_planned_bytes") or 0),
    }


def device_margin_bytes(dev: Doc) -> int:
    """Memory the planner keeps free on the device (the plan's own figure when it states one)."""
    margin = dev.get("memory_margin_bytes")
    if isinstance(margin, int):
        return margin
    from gpumix.estimate.memory import kind_margin_bytes

    return kind_margin_bytes("cpu" if dev.get("kind") == "cpu" else "gpu", int(dev.get("memory_total_bytes") or 0))


# ---- services --------------------------------------------------------------------------------------------------
def services(doc: Doc) -> list[Doc]:
    return list(doc.get("services") or [])


def service_device_ids(doc: Doc, svc: Doc) -> list[str]:
    """The service's devices as plan-wide ids, in engine order (first = main device)."""
    return [str(ref) for ref in svc.get("devices") or []]


def service_memory(doc: Doc, svc: Doc) -> list[tuple[str, dict[str, int]]]:
    """Per device of the service: (device id, {weights, kv_cache, compute, overhead} bytes)."""
    ids = service_device_ids(doc, svc)
    parts = list(svc.get("memory_breakdown") or [])
    totals = list(svc.get("memory_bytes") or [])
    out = []
    for i, dev in enumerate(ids):
        if i < len(parts):
            out.append((dev, {p: int(parts[i].get(f"{p}_bytes") or 0) for p in BREAKDOWN_PARTS}))
        elif i < len(totals):  # no breakdown: book it all as weights
            out.append((dev, {"weights": int(totals[i]), "kv_cache": 0, "compute": 0, "overhead": 0}))
    return out


def service_layers(svc: Doc) -> list[int]:
    return [int(n) for n in svc.get("layers") or []]


def service_tensor_split(doc: Doc, svc: Doc) -> dict[str, float]:
    """llama.cpp `-ts` value per device id. `-ts` covers GPUs only, so under CPU offload its values belong to the
    service's GPUs in order."""
    values = [float(v) for v in svc.get("tensor_split") or []]
    ids = service_device_ids(doc, svc)
    if len(values) != len(ids):
        kinds = {device_id(d): d.get("kind", "gpu") for d in devices(doc)}
        ids = [i for i in ids if kinds.get(i, "gpu") != "cpu"]
    return dict(zip(ids, values, strict=False))


def service_main_device(doc: Doc, svc: Doc) -> str | None:
    """The engine's main device: the first GPU of a multi-device service (CPU offload lists the CPU first)."""
    ids = service_device_ids(doc, svc)
    kinds = {device_id(d): d.get("kind", "gpu") for d in devices(doc)}
    return next((i for i in ids if kinds.get(i, "gpu") != "cpu"), ids[0] if ids else None)


def service_placement(svc: Doc) -> dict[str, Any]:
    return {
        "mode": svc.get("mode", "single"),
        "engine": svc.get("engine", "?"),
        "replicas": int(svc.get("replicas") or 1),
        "n_gpu_layers": svc.get("n_gpu_layers"),
        "endpoints": list(svc.get("endpoints") or []),
        "host": svc.get("host"),
        "fallback": svc.get("fallback"),
    }


def service_model(svc: Doc) -> dict[str, Any]:
    return {"model": svc.get("model", "?"), "quant": svc.get("quant", "?"), "kind": svc.get("model_kind", "llm"),
            "path": svc.get("model_path")}  # fmt: skip


def service_workload(svc: Doc) -> dict[str, Any]:
    return {
        "context": svc.get("context"),
        "concurrency": svc.get("concurrency"),
        "objective": svc.get("objective"),
        "kv_cache_tokens": svc.get("kv_cache_tokens"),
        "max_full_context_sequences": svc.get("max_full_context_sequences"),
    }


def replica_shares(svc: Doc) -> list[float]:
    """Share of the service's streams each replica takes (`replica_shares`: the planner sizes replicas by speed);
    even where the plan does not say."""
    shares = svc.get("replica_shares")
    if isinstance(shares, list) and shares:
        return [float(s) for s in shares]
    n = int(svc.get("replicas") or 1)
    return [1.0 / n] * n if svc.get("mode") == "replica" else []


def replica_concurrency(svc: Doc) -> list[int]:
    """Streams each replica serves (its -np / --max-num-seqs), where the plan says."""
    values = svc.get("replica_concurrency")
    return [int(v) for v in values] if isinstance(values, list) else []


def predicted(svc: Doc) -> dict[str, Any]:
    return dict(svc.get("predicted") or {})


def predicted_range(svc: Doc, metric: str) -> tuple[float, float] | None:
    """(low, high) of a prediction where the estimator gives one (an 80% interval): `predicted.<metric>_low` and
    `_high`, or `predicted.<metric>_range` / `predicted.ranges.<metric>` as [low, high]; None otherwise."""
    pred = predicted(svc)
    low, high = pred.get(f"{metric}_low"), pred.get(f"{metric}_high")
    if isinstance(low, int | float) and isinstance(high, int | float):
        return float(low), float(high)
    value = pred.get(f"{metric}_range") or (pred.get("ranges") or {}).get(metric)
    if isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(v, int | float) for v in value):
        return float(value[0]), float(value[1])
    if isinstance(value, dict) and isinstance(value.get("low"), int | float) and isinstance(value.get("high"), int | float):
        return float(value["low"]), float(value["high"])
    return None


def slo_checks(svc: Doc) -> list[dict[str, Any]]:
    return [dict(c) for c in svc.get("slo") or []]


def slo_range(check: Doc) -> tuple[float, float] | None:
    """(low, high) of an SLO check's prediction, where the plan gives `predicted_low` and `predicted_high`."""
    low, high = check.get("predicted_low"), check.get("predicted_high")
    if isinstance(low, int | float) and isinstance(high, int | float):
        return float(low), float(high)
    return None


def service_cost(svc: Doc) -> float | None:
    return svc.get("gbp_per_million_tokens")


def llm_speed(svc: Doc) -> float | None:
    """Tokens/s the plan predicts for a text-generating service at its planned concurrency (aggregate, else one
    stream); None for services that generate no tokens (embeddings, rerank, images, audio)."""
    endpoints = svc.get("endpoints")
    generates = any(e in ("/v1/chat/completions", "/v1/completions") for e in endpoints) if endpoints else (
        svc.get("model_kind", "llm") == "llm")
    if not generates:
        return None
    pred = predicted(svc)
    return pred.get("aggregate_tokens_per_s") or pred.get("decode_tokens_per_s")
