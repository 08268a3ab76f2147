"""The planner: plan file → Plan. What runs where, split how, in which mode, how fast, at what cost.

1. Devices come from the file or from this machine (`fleet.build_devices`); services are resolved
   (`resolve.resolve_service`).
2. Every service gets candidate placements (`candidates`), each estimated and scored against the service's
   objective (`score`).
3. HiGHS picks one option per service (`assign.solve_assignment`): memory within free − margin on every device,
   declared loads ≤ 1, the LLM on the card that serves it best, small services on the cheaper card.
4. Predictions, SLO checks, cost (`assemble`), reasons for what could not be placed (`unplaced`) and lint
   warnings (`lint`) complete the Plan.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from gpumix.errors import GpumixError
from gpumix.estimate.calibration import Calibration, load_calibration
from gpumix.estimate.memory import usable_bytes
from gpumix.hardware.spec import Device
from gpumix.kinds import OBJECTIVES
from gpumix.plan.assemble import plan_cost, planned_devices, planned_service, service_costs
from gpumix.plan.assign import SOLVER_NAME, Choice, solve_assignment
from gpumix.plan.candidates import (
    MAX_CHOICES,
    MAX_HOSTS_PER_SERVICE,
    SINGLES_PER_CLASS,
    Option,
    candidate_devices,
    device_shares,
    host_classes,
    llm_options,
    prune_choices,
    service_options,
)
from gpumix.plan.fleet import build_devices, device_price, dkey
from gpumix.plan.resolve import resolve_service
from gpumix.plan.result import Plan
from gpumix.plan.score import score_options
from gpumix.plan.spec import PlanSpec, SourceLines, load_plan_with_lines
from gpumix.plan.unplaced import unplaced_reason

# Problem sizes: up to EXACT_CHOICES candidate placements HiGHS must prove optimality (gap 0); above, it stops at
# LARGE_GAP or LARGE_TIME_LIMIT_S and the plan says "not proven optimal" with the gap.
EXACT_CHOICES = 400
LARGE_GAP = 1e-3
LARGE_TIME_LIMIT_S = 0.5


def plan_file(path: Path, objective: str | None = None, calibration: Path | None = None) -> Plan:
    """Plan the services of a plan file (what `gpumix plan FILE` and `gpumix up FILE` call)."""
    spec, lines = load_plan_with_lines(Path(path))
    return plan_services(spec, objective=objective, calibration=calibration, source=str(path), lines=lines)


def plan_services(
    spec: PlanSpec,
    *,
    objective: str | None = None,
    calibration: Path | Calibration | None = None,
    source: str | None = None,
    lines: SourceLines | None = None,
    devices: Sequence[Device] | None = None,
) -> Plan:
    from gpumix.plan import lint

    if objective is not None and objective not in OBJECTIVES:
        raise GpumixError(f"unknown objective {objective!r}", hint=f"use {' or '.join(OBJECTIVES)}")
    lines = lines or SourceLines()
    src = source or "<plan>"
    cal = calibration if isinstance(calibration, Calibration) else load_calibration(calibration)
    cal_name = str(calibration) if isinstance(calibration, Path | str) else None
    if devices is None:
        devs, sockets = build_devices(spec, src, lines)
    else:
        devs, sockets = list(devices), {}
    if not devs:
        raise GpumixError(f"{src}: no devices to plan on", hint="add a `devices:` list")
    services = [resolve_service(e, i, spec, src, lines, objective) for i, e in enumerate(spec.services)]
    prices = {dkey(d): p for d in devs if (p := device_price(d, spec)) is not None}
    max_bandwidth = max((d.spec.mem_bandwidth_gb_per_s for d in devs), default=1.0)
    all_options: list[list[Option]] = []
    cache: dict = {}
    classes = host_classes(devs)
    pruned_hosts = sum(len(hosts) for hosts in classes.values()) > MAX_HOSTS_PER_SERVICE
    for svc in services:
        pool = candidate_devices(devs, classes, svc.index) if pruned_hosts and svc.entry.host is None else devs
        if svc.model.kind == "llm":
            opts = llm_options(svc, pool, spec, sockets, cal, cache, SINGLES_PER_CLASS if pruned_hosts else None)
        else:
            opts = service_options(svc, pool, cache)
        score_options(svc, opts, max_bandwidth)
        all_options.append(opts)

    choices: list[Choice] = []
    option_of: list[Option] = []
    index_of = {dkey(d): i for i, d in enumerate(devs)}
    for svc, opts in zip(services, all_options, strict=True):
        for opt in opts:
            if not opt.fits():
                continue
            load = svc.entry.load
            shares = device_shares(opt)
            choices.append(Choice(
                service=svc.index, cost=opt.cost,
                memory={index_of[dkey(d)]: m for d, m in zip(opt.devices, opt.memory_bytes, strict=True)},
                load={index_of[dkey(d)]: load * s for d, s in zip(opt.devices, shares, strict=True)} if load else {},
            ))  # fmt: skip
            option_of.append(opt)
    capacity = {i: usable_bytes(d) for i, d in enumerate(devs)}
    pruned = len(choices) > MAX_CHOICES or pruned_hosts
    if pruned:
        choices, option_of = prune_choices(choices, option_of, len(services))
    small = len(choices) <= EXACT_CHOICES
    result = solve_assignment(len(services), choices, capacity, rel_gap=0.0 if small else LARGE_GAP,
                              time_limit_s=20.0 if small else LARGE_TIME_LIMIT_S)  # fmt: skip
    per_service: dict[int, list[Option]] = {}
    for choice, opt in zip(choices, option_of, strict=True):
        per_service.setdefault(choice.service, []).append(opt)
    chosen: list[Option | None] = []
    for svc in services:
        local = result.chosen[svc.index]
        chosen.append(None if local is None else per_service[svc.index][local])

    reasons = [unplaced_reason(svc, all_options[svc.index], devs, per_service.get(svc.index), chosen)
               for svc, opt in zip(services, chosen, strict=True) if opt is None]  # fmt: skip
    planned_services = [planned_service(svc, opt) for svc, opt in zip(services, chosen, strict=True)]
    devices_out = planned_devices(devs, services, chosen, prices)
    planned_services = service_costs(planned_services, devices_out)
    cost = plan_cost(devices_out, planned_services, services)
    plan = Plan(
        source=source,
        feasible=not reasons,
        optimal=result.optimal and not pruned,
        solver=SOLVER_NAME + ("" if result.optimal and not pruned else
                              f" (gap {result.gap:.2%}{', candidates pruned' if pruned else ''})"),
        reasons=reasons,
        devices=devices_out,
        services=planned_services,
        cost=cost,
        calibration=cal_name,
    )
    context = lint.LintContext(spec=spec, devices=devs, services=services, options=all_options, chosen=chosen,
                               sockets=sockets, calibration=cal)  # fmt: skip
    return plan.model_copy(update={"warnings": lint.lint(plan, context)})


