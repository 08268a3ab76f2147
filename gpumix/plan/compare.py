"""`compare`: the same services planned on several hardware options; `explain`: the alternatives behind one
service's placement (memory-proportional split vs the chosen split vs one card vs tensor parallel ...);
`split_curve`: predicted speed over every split of a split service's layers (the report's split-vs-speed view)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from gpumix.errors import GpumixError
from gpumix.estimate.calibration import Calibration
from gpumix.estimate.types import Estimate
from gpumix.hardware.spec import Device
from gpumix.kinds import Objective, PlacementMode
from gpumix.plan import planner
from gpumix.plan import split as splitmod
from gpumix.plan.candidates import Option, by_host, llm_option
from gpumix.plan.fleet import Discover, links_for
from gpumix.plan.planning import Planning
from gpumix.plan.resolve import Resolved
from gpumix.plan.result import Plan, PlannedService
from gpumix.plan.spec import PlanSpec, load_plan_with_lines
from gpumix.yaml_input import did_you_mean

# The rental buyer's shortlist (VISION.md): used when `gpumix compare` gets no --option.
DEFAULT_OPTIONS = (
    "RTX 4090",
    "RTX 4090 + RTX 5060 Ti 16GB",
    "RTX 5090",
    "2x RTX 4090",
    "RTX PRO 6000",
    "H100 PCIe",
)


@dataclass
class ComparisonRow:
    option: str
    plan: Plan
    slos_met: int
    slos_total: int
    verdict: str = ""


def devices_for_option(text: str) -> list[Device]:
    from gpumix.hardware.catalog import parse_device_list
    from gpumix.hardware.devices import device_from_spec

    return [device_from_spec(spec, i) for i, spec in enumerate(parse_device_list(text))]


def compare(spec: PlanSpec, options: Sequence[str] = DEFAULT_OPTIONS, objective: str | None = None,
            calibration: Calibration | None = None, calibration_name: str | None = None) -> list[ComparisonRow]:  # fmt: skip
    rows = []
    for text in options:
        plan = planner.plan_services(spec, objective=objective, calibration=calibration,
                                     calibration_name=calibration_name, devices=devices_for_option(text),
                                     advise=False)  # fmt: skip
        checks = [c for s in plan.services for c in s.slo]
        rows.append(ComparisonRow(option=text, plan=plan, slos_met=sum(c.met for c in checks), slos_total=len(checks)))
    _verdicts(rows)
    return rows


def _verdicts(rows: list[ComparisonRow]) -> None:
    good = [r for r in rows if r.plan.feasible and r.slos_met == r.slos_total]
    cheapest = min(good, key=lambda r: r.plan.cost.gbp_per_month or float("inf"), default=None)
    fastest = max(good, key=lambda r: _llm_tokens(r.plan), default=None)
    for row in rows:
        if not row.plan.feasible:
            row.verdict = "does not fit: " + (row.plan.reasons[0] if row.plan.reasons else "?")
        elif row.slos_met < row.slos_total:
            missed = [f"{s.name} {c.metric}" for s in row.plan.services for c in s.slo if not c.met]
            row.verdict = "misses SLO: " + ", ".join(missed[:3])
        elif row is cheapest:
            row.verdict = "best value: cheapest option that fits and meets every SLO"
        elif row is fastest:
            row.verdict = "fastest aggregate throughput"
        else:
            row.verdict = "fits and meets SLOs"


def _llm_tokens(plan: Plan) -> float:
    return sum(s.predicted.aggregate_tokens_per_s or 0.0 for s in plan.services if s.model_kind == "llm")


@dataclass
class Alternative:
    label: str
    mode: str
    devices: list[str]  # names
    device_ids: list[str] = field(default_factory=list)  # plan-wide ids (gpu0, HOST/gpu1)
    layers: list[int] = field(default_factory=list)
    fits: bool = True
    decode_tokens_per_s: float | None = None
    aggregate_tokens_per_s: float | None = None
    ttft_s: float | None = None
    memory_gb: list[float] = field(default_factory=list)
    kv_tokens: list[int] = field(default_factory=list)  # LLMs: tokens of KV per engine process (one per replica)
    chosen: bool = False
    note: str = ""
    # 80 % ranges of the estimate (Estimate.*_low/_high); None without calibration bands.
    decode_tokens_per_s_low: float | None = None
    decode_tokens_per_s_high: float | None = None
    aggregate_tokens_per_s_low: float | None = None
    aggregate_tokens_per_s_high: float | None = None
    ttft_s_low: float | None = None
    ttft_s_high: float | None = None

    def with_ranges(self, est: Estimate | None) -> Alternative:
        """This alternative with the 80 % ranges of its estimate (none for a non-LLM option)."""
        if est is None:
            return self
        names = ("decode_tokens_per_s", "aggregate_tokens_per_s", "ttft_s")
        return replace(self, **{f"{n}_{end}": getattr(est, f"{n}_{end}") for n in names for end in ("low", "high")})


def explain(path: Path, service: str, objective: str | None = None, calibration: Calibration | None = None,
            calibration_name: str | None = None,
            discover: Discover | None = None) -> tuple[Plan, list[Alternative]]:  # fmt: skip
    """The plan, and every placement considered for `service` with its predicted speed (from the one planning
    run: nothing is resolved or discovered twice)."""
    spec, lines = load_plan_with_lines(path)
    names = [s.name for s in spec.services]
    if service not in names:
        raise GpumixError(f"{path}: no service named {service!r}{did_you_mean(service, names)}",
                          hint=f"services: {', '.join(names)}")  # fmt: skip
    result = planner.planning(spec, objective=objective, calibration=calibration, calibration_name=calibration_name,
                              source=str(path), lines=lines, discover=discover, advise=False)  # fmt: skip
    return result.plan, alternatives(result, service)


def alternatives(result: Planning, service: str) -> list[Alternative]:
    """Every option the planner considered for `service`, plus llama.cpp's own default splits; chosen first."""
    index = result.index_of(service)
    svc, chosen = result.services[index], result.chosen[index]
    assigned = result.assigned[index] if result.assigned else chosen
    # The chosen placement as the plan runs it (its KV grown after the assignment), then the others considered.
    out = [] if chosen is None else [_from_option(chosen, True)]
    out += [_from_option(o, False) for o in result.options[index] if o is not assigned and o is not chosen]
    if svc.model.kind == "llm":
        out += _default_splits(svc, result)
    out.sort(key=lambda a: (not a.chosen, not a.fits, -(a.decode_tokens_per_s or 0.0)))
    return out


def _from_option(opt: Option, is_chosen: bool, label: str | None = None) -> Alternative:
    label = label or {"layer_split": "speed-aware layer split", "pipeline_parallel": "pipeline parallel (speed-aware)"}.get(
        opt.mode, opt.mode.replace("_", " ")
    )
    if opt.memory_setting is not None:  # image services: sd-server's defaults or its low-memory setting
        label += f" ({opt.memory_setting} memory setting)"
    alternative = Alternative(
        label=label, mode=opt.mode, devices=[d.name for d in opt.devices], device_ids=[d.id for d in opt.devices], layers=list(opt.layers),
        fits=opt.fits(), decode_tokens_per_s=opt.decode, aggregate_tokens_per_s=opt.aggregate, ttft_s=opt.ttft_s,
        memory_gb=[round(m / 1e9, 2) for m in opt.memory_bytes], kv_tokens=list(opt.kv_tokens), chosen=is_chosen,
        note="chosen" if is_chosen else ("" if opt.fits() else "does not fit (free − margin)"),
    )  # fmt: skip
    return alternative.with_ranges(opt.est if opt.decode else None)


def _split_alternative(result: Planning, svc: Resolved, mode: PlacementMode, group: Sequence[Device],
                       layers: Sequence[int], label: str, chosen: bool = False,
                       kv_tokens: Sequence[int] | None = None) -> Alternative | None:  # fmt: skip
    """One given split of `svc` over `group`, estimated as the planner estimates its own options (`llm_option`,
    with `kv_tokens` of KV; default every stream at full context); None when the estimator cannot place it so."""
    try:
        opt = llm_option(svc, mode, group, tuple(layers), links_for(result.spec, group, result.sockets),
                         result.calibration, kv_tokens=kv_tokens)  # fmt: skip
    except GpumixError:
        return None
    return _from_option(opt, chosen, label)


def _default_splits(svc: Resolved, result: Planning) -> list[Alternative]:
    """What llama.cpp would do by itself on each host: -ts proportional to free memory, and equal shares."""
    gpus = sorted((d for d in result.devices if d.kind == "gpu"), key=lambda d: d.spec.mem_bandwidth_gb_per_s,
                  reverse=True)  # fmt: skip
    out = []
    for group in by_host(gpus).values():
        if len(group) < 2:
            continue
        for label, layers in _llama_default_splits(group, svc.model.n_layers):
            alt = _split_alternative(result, svc, "layer_split", group, layers, label)
            if alt is not None:
                out.append(alt)
    return out


def _llama_default_splits(group: Sequence[Device], n_layers: int) -> list[tuple[str, tuple[int, ...]]]:
    return [(MEMORY_PROPORTIONAL_LABEL, splitmod.memory_proportional_split(group, n_layers)),
            (EVEN_LABEL, splitmod.even_split(len(group), n_layers))]  # fmt: skip


# ---- the split-vs-speed curve ------------------------------------------------------------------------------------
MEMORY_PROPORTIONAL_LABEL = "llama.cpp default split (-ts ∝ free memory)"
EVEN_LABEL = "even split"
CURVE_MODES: tuple[PlacementMode, ...] = ("layer_split", "pipeline_parallel")


@dataclass(frozen=True)
class SplitCurve:
    """Predicted speed of one split service over the splits of its layers between its devices (engine order):
    the planned split, llama.cpp's memory-proportional default and the even split (None where the estimator
    cannot place them), and — on two devices — every split (k, n − k) as the sweep. Every point is estimated as
    the planner estimates its own options, with the KV the planned placement holds (`kv_tokens`)."""

    service: str
    mode: PlacementMode
    objective: Objective
    concurrency: int
    devices: tuple[Device, ...]
    n_layers: int
    planned: Alternative
    memory_proportional: Alternative | None
    even: Alternative | None
    sweep: tuple[Alternative, ...] = ()
    kv_tokens: tuple[int, ...] | None = None


def split_curve(result: Planning, service: str, planned: PlannedService | None = None) -> SplitCurve | None:
    """The split-vs-speed curve of `service` from one planning run. `planned` is the placement to mark as the
    plan's (a plan.json's own, which may differ from this run's choice); by default this run's choice. None when
    that placement is not a layer split / pipeline over two or more devices of this run."""
    index = result.index_of(service)
    svc, chosen = result.services[index], result.chosen[index]
    by_id = {d.id: d for d in result.devices}
    kv: tuple[int, ...] | None
    if planned is not None:
        mode, ids, layers = planned.mode, list(planned.devices), tuple(planned.layers)
        kv = None if planned.kv_cache_tokens is None else (planned.kv_cache_tokens,)
    elif chosen is not None:
        mode, ids, layers = chosen.mode, [d.id for d in chosen.devices], chosen.layers
        kv = chosen.kv_tokens or None
    else:
        return None
    if mode not in CURVE_MODES or len(layers) < 2 or len(ids) != len(layers) or not all(i in by_id for i in ids):
        return None
    group = [by_id[i] for i in ids]
    n = sum(layers)
    mark = _split_alternative(result, svc, mode, group, layers, "speed-aware split (planned)", True, kv)
    if mark is None:
        return None
    defaults = [_split_alternative(result, svc, mode, group, split, label, kv_tokens=kv)
                for label, split in _llama_default_splits(group, n)]  # fmt: skip
    pairs = range(1, n) if len(group) == 2 else range(0)
    sweep = [_split_alternative(result, svc, mode, group, (k, n - k), f"{k}/{n - k}", kv_tokens=kv) for k in pairs]
    return SplitCurve(
        service=service, mode=mode, objective=svc.objective, concurrency=svc.workload.parallel, devices=tuple(group),
        n_layers=n, planned=mark, memory_proportional=defaults[0], even=defaults[1],
        sweep=tuple(a for a in sweep if a is not None), kv_tokens=kv,
    )  # fmt: skip
