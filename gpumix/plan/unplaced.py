"""Why a service could not be placed: one sentence naming what it needs, what the devices offer and what to do."""

from __future__ import annotations

from collections.abc import Sequence

from gpumix.estimate import estimate
from gpumix.estimate.calibration import load_calibration
from gpumix.estimate.memory import total_weight_bytes, usable_bytes
from gpumix.estimate.types import Links, Placement
from gpumix.hardware.spec import Device
from gpumix.plan.candidates import Option
from gpumix.plan.resolve import Resolved


def unplaced_reason(svc: Resolved, options: list[Option], devs: Sequence[Device], fitting: list[Option] | None,
                     chosen: list[Option | None]) -> str:  # fmt: skip
    from gpumix.units import GB

    name = f"{svc.entry.name} ({svc.model.name} {svc.quant.id})"
    if fitting and svc.entry.load:
        return (
            f"{name} fits in memory but every card it fits is already busy: with its declared load "
            f"{svc.entry.load:g} the services sharing the card would need more than 100% of its bandwidth/compute; "
            "add a card or lower the declared loads"
        )
    if fitting:
        placed = sum(sum(o.memory_bytes) for o in chosen if o is not None)
        need = min(sum(o.memory_bytes) for o in fitting)
        usable = sum(max(usable_bytes(d), 0) for d in devs)
        return (
            f"{name} fits on its own but not next to the other services: they take {placed / GB:.1f} GB, it needs "
            f"{need / GB:.1f} GB more, and the devices offer {usable / GB:.1f} GB usable (free − margin) — "
            "a card's leftover space cannot be pooled; add memory or drop a service"
        )
    weights = total_weight_bytes(svc.model, svc.quant) if svc.model.kind == "llm" else svc.model.service_memory_bytes
    if not options:
        return f"{name}: no device can run it (mode {svc.entry.mode}, engine {svc.engine})"
    if svc.model.kind == "llm":
        gpus = [d for d in devs if d.kind == "gpu" and d.host == devs[0].host] or list(devs)
        if len(gpus) > 1 or not any(d.kind == "cpu" for d in devs):
            whole = estimate(svc.model, svc.quant, Placement(mode="layer_split", devices=tuple(gpus)), svc.workload,
                             Links(), load_calibration(None))  # fmt: skip
            need = sum(d.memory_bytes for d in whole.devices)
            have = sum(usable_bytes(d) for d in gpus)
            if need > have:
                total = sum(d.memory_total_bytes for d in gpus)
                return (
                    f"{name} does not fit: it needs {need / GB:.1f} GB (weights {(weights or 0) / GB:.1f} GB + KV "
                    f"cache for {svc.workload.context} x {svc.workload.parallel} tokens + buffers) but "
                    f"{' + '.join(d.name for d in gpus)} have {total / GB:.1f} GB ({have / GB:.1f} GB usable after "
                    f"the safety margin): short by {(need - have) / GB:.1f} GB; add a card or system RAM "
                    "(CPU offload), or use a smaller quant / shorter context"
                )

    # The option that comes closest: smallest total shortfall against free − margin.
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


