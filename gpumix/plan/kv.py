"""After the assignment: each LLM's KV pool gets what its cards leave.

The solver places every service with each LLM's KV pool at a level between every stream at full context and one full
context (`candidates.llm_variants`): the levels steer what goes beside an LLM. Here the room those pools have — the
usable memory (free − margin) of their cards once every other chosen service is in place — is divided again, from
one full context each up to each pool's maximum (`kvmath.share_leftover`: the pools on a card rise together, in
the share of their maximum they hold). Each grown placement is estimated again, so its memory breakdown holds the
KV it was given and its predictions use the sequences that KV holds at full context
(`gpumix.estimate.memory.sequences_held`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from gpumix.estimate.memory import usable_bytes
from gpumix.hardware.spec import Device
from gpumix.plan import kvmath
from gpumix.plan.candidates import CandidateContext, Option, kv_bytes_per_token, llm_option
from gpumix.plan.resolve import Resolved

MAX_SHRINK_ROUNDS = 8  # the linear bytes-per-token model can overshoot (sliding-window layers): shrink and re-check


def allocate(services: Sequence[Resolved], chosen: Sequence[Option | None],
             ctx: CandidateContext) -> list[Option | None]:  # fmt: skip
    """The chosen options with their KV pools grown into the memory their cards have left."""
    devices = {d.id: d for opt in chosen if opt is not None for d in opt.devices}
    growers: list[kvmath.Grower] = []
    owners: list[tuple[int, int]] = []  # (service index, process index) of each grower
    for svc, opt in zip(services, chosen, strict=True):
        if opt is None or not opt.memory_least:
            continue
        for p, (least, most) in enumerate(zip(opt.kv_least_tokens, opt.kv_max_tokens, strict=True)):
            growers.append(kvmath.Grower(least, most, kv_bytes_per_token(opt, p)))
            owners.append((svc.index, p))
    if not growers:
        return list(chosen)
    used = _used([o if o is None or not o.memory_least else _least(o) for o in chosen])
    leftover = {i: float(usable_bytes(d) - used.get(i, 0)) for i, d in devices.items()}
    extra = kvmath.share_leftover(growers, leftover)
    budgets: dict[int, list[int]] = {}
    for (index, p), grower, more in zip(owners, growers, extra, strict=True):
        opt = chosen[index]
        assert opt is not None
        step = kvmath.kv_step(opt.workloads[p])
        tokens = kvmath.round_budget(grower.tokens + more, grower.tokens, grower.max_tokens, step)
        budgets.setdefault(index, list(opt.kv_least_tokens))[p] = tokens
    for _ in range(MAX_SHRINK_ROUNDS):
        out = [_grown(svc, opt, budgets.get(svc.index), ctx) for svc, opt in zip(services, chosen, strict=True)]
        over = _over_full(out, devices)
        if not over:
            return out
        _shrink(budgets, chosen, over)
    return [_grown(svc, opt, None if opt is None else list(opt.kv_least_tokens) or None, ctx)
            for svc, opt in zip(services, chosen, strict=True)]  # the least always fits (the solver placed more)


def _least(opt: Option) -> Option:
    """The option with its pools at their least (for the room they share)."""
    return dataclasses.replace(opt, memory=opt.memory_least, kv_tokens=opt.kv_least_tokens)


def _used(options: Sequence[Option | None]) -> dict[str, int]:
    used: dict[str, int] = {}
    for opt in options:
        if opt is not None:
            for d, mem in zip(opt.devices, opt.memory_bytes, strict=True):
                used[d.id] = used.get(d.id, 0) + mem
    return used


def _grown(svc: Resolved, opt: Option | None, budget: list[int] | None, ctx: CandidateContext) -> Option | None:
    """The option estimated again with its processes' new KV budgets (unchanged without one)."""
    if opt is None or budget is None:
        return opt
    grown = llm_option(svc, opt.mode, opt.devices, opt.layers, ctx.links(opt.devices), ctx.calibration, ctx.cache,
                       kv_tokens=budget, streams=opt.streams)  # fmt: skip
    grown.cost = opt.cost
    return grown


def _over_full(options: Sequence[Option | None], devices: dict[str, Device]) -> dict[str, int]:
    """Devices whose planned memory is above free − margin, with the excess in bytes."""
    used = _used(options)
    return {i: used[i] - usable_bytes(d) for i, d in devices.items() if used.get(i, 0) > usable_bytes(d)}


def _shrink(budgets: dict[int, list[int]], chosen: Sequence[Option | None], over: dict[str, int]) -> None:
    """Take the excess back from the grown pools on each over-full device, in whole steps, never below the least."""
    for device_id, excess in over.items():
        on_device = [(index, p) for index, budget in budgets.items() for p in range(len(budget))
                     if (opt := chosen[index]) is not None and budget[p] > opt.kv_least_tokens[p]
                     and device_id in kv_bytes_per_token(opt, p)]  # fmt: skip
        for index, p in on_device:
            opt = chosen[index]
            assert opt is not None
            per_token = kv_bytes_per_token(opt, p)[device_id] or 1.0
            step = kvmath.kv_step(opt.workloads[p])
            cut = excess / len(on_device) / per_token + step
            budgets[index][p] = kvmath.round_budget(budgets[index][p] - cut, opt.kv_least_tokens[p], opt.kv_max_tokens[p],
                                                    step)  # fmt: skip
