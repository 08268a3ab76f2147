"""Why a service could not be placed: one sentence naming what it needs, what the devices offer and what to do."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from gpumix.estimate import estimate
from gpumix.estimate.calibration import Calibration
from gpumix.estimate.memory import shares_kv_pool, total_weight_bytes, usable_bytes
from gpumix.estimate.types import Links, Placement
from gpumix.hardware.spec import Device
from gpumix.plan import kvmath
from gpumix.plan.candidates import CandidateContext, Option, by_host, llm_options, service_pool
from gpumix.plan.resolve import Resolved
from gpumix.units import GB

# The plan-file key that lets a split of this engine cross hosts, and what it then runs.
CROSS_HOST_KEYS = {
    "llama.cpp": ("allow_rpc", "a llama.cpp layer split over the network (RPC)"),
    "vllm": ("allow_multinode", "vLLM pipeline parallel across hosts (Ray)"),
}


def unplaced_reason(svc: Resolved, options: list[Option], devs: Sequence[Device], fitting: list[Option] | None,
                    chosen: Sequence[Option | None], ctx: CandidateContext) -> str:  # fmt: skip
    name = f"{svc.entry.name} ({svc.model.name} {svc.quant.id})"
    if fitting:
        return _crowded_out(name, svc, fitting, devs, chosen)
    if svc.model.kind == "llm":
        cross = _cross_host_reason(name, svc, devs, ctx)
        if cross:
            return cross
    if not options:
        return f"{name}: no device can run it (mode {svc.entry.mode}, engine {svc.engine})"
    if svc.model.kind == "llm":
        short = _llm_shortfall(name, svc, devs, ctx)
        if short:
            return short
    return _closest_option(name, options)


def _crowded_out(name: str, svc: Resolved, fitting: list[Option], devs: Sequence[Device],
                 chosen: Sequence[Option | None]) -> str:  # fmt: skip
    if svc.entry.load:
        return (
            f"{name} fits in memory but every card it fits is already busy: with its declared load "
            f"{svc.entry.load:g} the services sharing the card would need more than 100% of its bandwidth/compute; "
            "add a card or lower the declared loads"
        )
    placed = sum(sum(o.memory_bytes) for o in chosen if o is not None)
    need = min(sum(o.memory_bytes) for o in fitting)
    usable = sum(max(usable_bytes(d), 0) for d in devs)
    return (
        f"{name} fits on its own but not next to the other services: they take {placed / GB:.1f} GB, it needs "
        f"{need / GB:.1f} GB more, and the devices offer {usable / GB:.1f} GB usable (free − margin) — "
        "a card's leftover space cannot be pooled; add memory or drop a service"
    )


def _cross_host_reason(name: str, svc: Resolved, devs: Sequence[Device], ctx: CandidateContext) -> str | None:
    """When only a split across hosts would hold it and the plan does not allow one: the key that would."""
    key, what = CROSS_HOST_KEYS.get(svc.engine, (None, ""))
    if key is None or getattr(svc.entry, key) or len(by_host(service_pool(svc.entry, devs))) < 2:
        return None
    allowed = dataclasses.replace(svc, entry=svc.entry.model_copy(update={key: True}))
    across = [o for o in llm_options(allowed, devs, ctx) if o.fits() and len(o.hosts) > 1]
    if not across:
        return None
    best = max(across, key=lambda o: o.speed)
    return (
        f"{name} does not fit on any one host; split across hosts over {' + '.join(d.id for d in best.devices)} "
        f"it would ({sum(best.memory_bytes) / GB:.1f} GB): set `{key}: true` on the service to allow {what}"
    )


def _llm_shortfall(name: str, svc: Resolved, devs: Sequence[Device], ctx: CandidateContext) -> str | None:
    """All GPUs of the roomiest host together are too small: by how much, in weights + KV + buffers."""
    hosts = by_host(service_pool(svc.entry, devs))
    if any(d.kind == "cpu" for d in devs) and all(sum(d.kind == "gpu" for d in h) <= 1 for h in hosts.values()):
        return None
    gpus = roomiest_gpus(svc, devs)
    if not gpus:
        return None
    need = layer_split_need_bytes(svc, gpus, ctx.calibration)
    pooled = shares_kv_pool(svc.workload) and svc.workload.parallel > 1  # a shared pool needs one full context
    ctx_tokens, streams = svc.workload.context, svc.workload.parallel
    kv = f"one {ctx_tokens}-token sequence" if pooled else f"{ctx_tokens} x {streams} tokens"
    have = sum(usable_bytes(d) for d in gpus)
    if need <= have:
        return None
    weights = total_weight_bytes(svc.model, svc.quant)
    total = sum(d.memory_total_bytes for d in gpus)
    return (
        f"{name} does not fit: it needs {need / GB:.1f} GB (weights {weights / GB:.1f} GB + KV "
        f"cache for {kv} + buffers) but "
        f"{' + '.join(d.name for d in gpus)} have {total / GB:.1f} GB ({have / GB:.1f} GB usable after "
        f"the safety margin): short by {(need - have) / GB:.1f} GB; add a card or system RAM "
        "(CPU offload), or use a smaller quant / shorter context"
    )


def roomiest_gpus(svc: Resolved, devs: Sequence[Device]) -> list[Device]:
    """The GPUs (else all devices) of the host that offers the service the most memory; [] when the service may use
    no device at all (its `devices:`/`hosts:` leave none)."""
    hosts = by_host(service_pool(svc.entry, devs))
    return max(([d for d in h if d.kind == "gpu"] or list(h) for h in hosts.values()),
               key=lambda group: sum(usable_bytes(d) for d in group), default=[])  # fmt: skip


def layer_split_need_bytes(svc: Resolved, gpus: Sequence[Device], calibration: Calibration) -> int:
    """Memory an LLM needs as one layer split over `gpus` (weights + KV + buffers), fitting or not. With a shared
    KV pool (vLLM, llama.cpp --kv-unified) that is KV for one full-context sequence: enough to start."""
    workload = svc.workload
    if shares_kv_pool(workload) and workload.parallel > 1:
        workload = workload.model_copy(update={"kv_tokens": kvmath.min_kv_tokens(workload)})
    whole = estimate(svc.model, svc.quant, Placement(mode="layer_split", devices=tuple(gpus)), workload, Links(),
                     calibration)  # fmt: skip
    return sum(d.memory_bytes for d in whole.devices)


def _closest_option(name: str, options: list[Option]) -> str:
    """The option that comes closest: smallest total shortfall against free − margin."""

    def shortfall(o: Option) -> int:
        return sum(max(m - usable_bytes(d), 0) for d, m in zip(o.devices, o.memory_bytes, strict=True))

    closest = min(options, key=shortfall)
    need = sum(closest.memory_bytes)
    have = sum(usable_bytes(d) for d in closest.devices)
    where = " + ".join(d.name for d in closest.devices)
    return (
        f"{name} does not fit: it needs {need / GB:.1f} GB on {where}, which offer {have / GB:.1f} GB "
        f"(free − margin): short by {shortfall(closest) / GB:.1f} GB"
    )
