"""The planner: plan file → Plan. What runs where, split how, in which mode, how fast, at what cost.

1. Devices come from the file or from this machine (`fleet.build_devices`, discovery passed in by the caller);
   services are resolved (`resolve.resolve_service`).
2. Every service gets candidate placements (`candidates`), each estimated and scored against the service's
   objective (`score`); large fleets are pruned (`prune`).
3. HiGHS picks one option per service (`assign.solve_assignment`): memory within free − margin on every device,
   declared loads ≤ 1, the LLM on the card that serves it best, small services on the cheaper card.
4. Each LLM's KV pool grows into what its cards have left (`kv.allocate`), and is estimated again.
5. Predictions, SLO checks, cost (`assemble`), reasons for what could not be placed (`unplaced`) and lint
   warnings (`lint`) complete the Plan. `planning()` returns all of it (`Planning`); `plan_services()` the Plan.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gpumix.errors import GpumixError
from gpumix.estimate.calibration import Calibration, default_calibration
from gpumix.estimate.memory import usable_bytes
from gpumix.hardware.spec import Device
from gpumix.kinds import OBJECTIVES, Objective
from gpumix.plan import kv, lint
from gpumix.plan.advice import suggest
from gpumix.plan.assemble import plan_cost, planned_devices, planned_service, service_costs
from gpumix.plan.assign import SOLVER_NAME, UNPLACED_PENALTY, Assignment, Choice, solve_assignment
from gpumix.plan.candidates import CandidateContext, Option, llm_options, service_options
from gpumix.plan.fleet import Discover, build_devices, check_host_entries, check_service_hosts, device_price
from gpumix.plan.planning import Planning
from gpumix.plan.prune import (
    MAX_CHOICES,
    SINGLES_PER_CLASS,
    HostClass,
    candidate_devices,
    host_classes,
    prune_choices,
    too_many_hosts,
)
from gpumix.plan.resolve import Resolved, resolve_service
from gpumix.plan.result import Plan
from gpumix.plan.score import score_options
from gpumix.plan.spec import PlanSpec, load_plan_with_lines
from gpumix.plan.unplaced import unplaced_reason
from gpumix.yaml_input import SourceLines

# Problem sizes: up to EXACT_CHOICES candidate placements HiGHS must prove optimality (gap 0); above, it stops at
# LARGE_GAP or LARGE_TIME_LIMIT_S and the plan says "not proven optimal" with the gap.
EXACT_CHOICES = 400
EXACT_TIME_LIMIT_S = 20.0
LARGE_GAP = 1e-3
LARGE_TIME_LIMIT_S = 0.5


def plan_file(path: Path, objective: str | None = None, calibration: Calibration | None = None,
              calibration_name: str | None = None, discover: Discover | None = None, advise: bool = True) -> Plan:  # fmt: skip
    """Plan the services of a plan file (what `gpumix plan FILE` and `gpumix up FILE` call)."""
    return planning_of_file(path, objective, calibration, calibration_name, discover, advise).plan


def planning_of_file(path: Path, objective: str | None = None, calibration: Calibration | None = None,
                     calibration_name: str | None = None, discover: Discover | None = None,
                     advise: bool = True) -> Planning:  # fmt: skip
    spec, lines = load_plan_with_lines(Path(path))
    return planning(spec, objective=objective, calibration=calibration, calibration_name=calibration_name,
                    source=str(path), lines=lines, discover=discover, advise=advise)  # fmt: skip


def plan_services(
    spec: PlanSpec,
    *,
    objective: str | None = None,
    calibration: Calibration | None = None,
    calibration_name: str | None = None,
    source: str | None = None,
    lines: SourceLines | None = None,
    devices: Sequence[Device] | None = None,
    discover: Discover | None = None,
    advise: bool = True,
) -> Plan:
    """The Plan for `spec` (see `planning` for the arguments)."""
    return planning(spec, objective=objective, calibration=calibration, calibration_name=calibration_name,
                    source=source, lines=lines, devices=devices, discover=discover, advise=advise).plan  # fmt: skip


def planning(
    spec: PlanSpec,
    *,
    objective: str | None = None,
    calibration: Calibration | None = None,
    calibration_name: str | None = None,
    source: str | None = None,
    lines: SourceLines | None = None,
    devices: Sequence[Device] | None = None,
    discover: Discover | None = None,
    advise: bool = True,
    cache: dict[Any, Any] | None = None,
) -> Planning:
    """Plan `spec`: the Plan and what it was made from.

    `calibration` defaults to the packaged fit (`default_calibration()`); `calibration_name` is recorded in the
    plan. `devices` replaces the file's devices (`gpumix compare`); `discover` reads this machine's devices when the
    file has none, and sizes a `cpu:` entry without RAM/threads (the CLI passes
    `gpumix.hardware.discovery.LOCAL_MACHINE`; the planner never reads NVML or /proc).
    `advise`: when a service does not fit or misses its SLO, re-plan changes that would fix it (gpumix.plan.advice)
    into the Plan's `suggestions`. `cache`: estimates, splits and links shared between plannings of similar specs
    (advice re-plans with its own; every key names all its inputs)."""
    if objective is not None and objective not in OBJECTIVES:
        raise GpumixError(f"unknown objective {objective!r}", hint=f"use {' or '.join(OBJECTIVES)}")
    wanted: Objective | None = objective
    lines = lines or SourceLines()
    src = source or "<plan>"
    cal = calibration or default_calibration()
    devs, sockets = build_devices(spec, src, lines, discover) if devices is None else (list(devices), {})
    if not devs:
        raise GpumixError(f"{src}: no devices to plan on", hint="add a `devices:` list")
    if devices is None:  # `gpumix compare` swaps the hardware: a host pin then just leaves the service unplaced
        check_service_hosts(spec, devs, src, lines)
        check_host_entries(spec, devs, src, lines)
    services = [resolve_service(e, i, spec, src, lines, wanted) for i, e in enumerate(spec.services)]
    classes = host_classes(devs)
    ctx = CandidateContext(spec, sockets, cal, per_class=SINGLES_PER_CLASS if too_many_hosts(classes) else None,
                           cache={} if cache is None else cache)  # fmt: skip
    options = _all_options(services, devs, ctx, classes)
    assigned, assignment, pruned = _assign(services, devs, options)
    chosen = kv.allocate(services, assigned, ctx)
    plan = _plan(spec, devs, services, options, (assigned, chosen), ctx, assignment, pruned, source, calibration_name)
    result = Planning(spec=spec, plan=plan, devices=tuple(devs), sockets=sockets, services=tuple(services),
                      options=tuple(tuple(o) for o in options), chosen=tuple(chosen), calibration=cal,
                      assigned=tuple(assigned))  # fmt: skip
    result = dataclasses.replace(result, plan=plan.model_copy(update={"warnings": lint.lint(result)}))
    if not advise or not _needs_advice(result.plan):
        return result

    def replan(changed: PlanSpec, changed_devices: Sequence[Device] | None) -> Plan:
        return planning(changed, objective=objective, calibration=cal, calibration_name=calibration_name,
                        source=source, devices=changed_devices, advise=False, cache=ctx.cache).plan  # fmt: skip

    fixed = None if devices is None and spec.devices is not None else devs
    advice = suggest(result, replan, fixed)
    return dataclasses.replace(result, plan=result.plan.model_copy(update={"suggestions": advice}))


def _needs_advice(plan: Plan) -> bool:
    return not plan.feasible or any(not c.met for s in plan.services for c in s.slo)


def _all_options(services: list[Resolved], devs: list[Device], ctx: CandidateContext,
                 classes: dict[HostClass, list[str | None]]) -> list[list[Option]]:  # fmt: skip
    """Every service's candidate placements, scored against its objective."""
    max_bandwidth = max((d.spec.mem_bandwidth_gb_per_s for d in devs), default=1.0)
    out = []
    for svc in services:
        pool = candidate_devices(devs, classes, svc.index) if ctx.per_class and svc.entry.host is None else devs
        opts = llm_options(svc, pool, ctx) if svc.model.kind == "llm" else service_options(svc, pool, ctx)
        score_options(svc, opts, max_bandwidth)
        out.append(opts)
    return out


def _assign(services: list[Resolved], devs: list[Device],
            options: list[list[Option]]) -> tuple[list[Option | None], Assignment, bool]:  # fmt: skip
    """HiGHS picks one fitting option per service (or none); returns the chosen options, the solver's answer and
    whether candidates were pruned."""
    column = {d.id: i for i, d in enumerate(devs)}
    choices: list[Choice] = []
    option_of: list[Option] = []
    for svc, opts in zip(services, options, strict=True):
        for opt in opts:
            if opt.fits():
                choices.append(_choice(svc, opt, column))
                option_of.append(opt)
    capacity = {i: usable_bytes(d) for i, d in enumerate(devs)}
    pruned = len(choices) > MAX_CHOICES or too_many_hosts(host_classes(devs))
    if pruned:
        choices, option_of = prune_choices(choices, option_of)
    small = len(choices) <= EXACT_CHOICES
    result = solve_assignment(len(services), choices, capacity, rel_gap=0.0 if small else LARGE_GAP,
                              time_limit_s=EXACT_TIME_LIMIT_S if small else LARGE_TIME_LIMIT_S,
                              unplaced_penalty=_unplaced_penalties(options, capacity))  # fmt: skip
    per_service: dict[int, list[Option]] = {}
    for choice, opt in zip(choices, option_of, strict=True):
        per_service.setdefault(choice.service, []).append(opt)
    chosen = [None if (k := result.chosen[svc.index]) is None else per_service[svc.index][k] for svc in services]
    return chosen, result, pruned


def _unplaced_penalties(options: list[list[Option]], capacity: dict[int, int]) -> list[float]:
    """Leaving a service out costs UNPLACED_PENALTY × (1 + its least memory ÷ all usable memory): as few services
    left out as possible (two cost more than one, whatever their size), and among equally many, the smallest — the
    LLM a box is built for stays in, a side service that does not fit is named."""
    total = sum(max(c, 0) for c in capacity.values()) or 1
    need = [min((sum(o.memory_bytes) for o in opts), default=0) for opts in options]
    return [UNPLACED_PENALTY * (1 + min(n / total, 0.99)) for n in need]


def _choice(svc: Resolved, opt: Option, column: dict[str, int]) -> Choice:
    load = svc.entry.load
    return Choice(
        service=svc.index, cost=opt.cost,
        memory={column[d.id]: m for d, m in zip(opt.devices, opt.memory_bytes, strict=True)},
        load={column[d.id]: load * s for d, s in zip(opt.devices, opt.busy_shares(), strict=True)} if load else {},
    )  # fmt: skip


def _plan(spec: PlanSpec, devs: list[Device], services: list[Resolved], options: list[list[Option]],
          picked: tuple[list[Option | None], list[Option | None]], ctx: CandidateContext, assignment: Assignment,
          pruned: bool, source: str | None, calibration_name: str | None) -> Plan:  # fmt: skip
    """The Plan (without warnings) from the options the solver assigned and the same with their KV grown."""
    assigned, chosen = picked
    fitting = [[o for o in opts if o.fits()] for opts in options]
    reasons = [unplaced_reason(svc, options[svc.index], devs, fitting[svc.index], assigned, ctx)
               for svc, opt in zip(services, chosen, strict=True) if opt is None]  # fmt: skip
    prices = {d.id: p for d in devs if (p := device_price(d, spec)) is not None}
    devices_out = planned_devices(devs, services, chosen, prices, ctx.calibration)
    services_out = service_costs([planned_service(s, o) for s, o in zip(services, chosen, strict=True)], devices_out)
    proven = assignment.optimal and not pruned
    solver = SOLVER_NAME if proven else f"{SOLVER_NAME} (gap {assignment.gap:.2%}{', candidates pruned' if pruned else ''})"
    return Plan(source=source, feasible=not reasons, optimal=proven, solver=solver, reasons=reasons,
                devices=devices_out, services=services_out, cost=plan_cost(devices_out, services_out),
                calibration=calibration_name)  # fmt: skip
