"""`compare`: the same services planned on several hardware options; `explain`: the alternatives behind one
service's placement (memory-proportional split vs the chosen split vs one card vs tensor parallel ...)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gpumix.errors import GpumixError
from gpumix.estimate import estimate
from gpumix.estimate.calibration import Calibration
from gpumix.estimate.memory import usable_bytes
from gpumix.estimate.types import Estimate, Placement
from gpumix.hardware.spec import Device
from gpumix.plan import planner
from gpumix.plan import split as splitmod
from gpumix.plan.candidates import Option, by_host
from gpumix.plan.fleet import Discover, links_for
from gpumix.plan.planning import Planning
from gpumix.plan.resolve import Resolved
from gpumix.plan.result import Plan
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
                                     calibration_name=calibration_name, devices=devices_for_option(text))  # fmt: skip
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
        if est is not None:
            self.decode_tokens_per_s_low, self.decode_tokens_per_s_high = (est.decode_tokens_per_s_low,
                                                                           est.decode_tokens_per_s_high)
            self.aggregate_tokens_per_s_low, self.aggregate_tokens_per_s_high = (est.aggregate_tokens_per_s_low,
                                                                                 est.aggregate_tokens_per_s_high)
            self.ttft_s_low, self.ttft_s_high = est.ttft_s_low, est.ttft_s_high
        return self


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
                              source=str(path), lines=lines, discover=discover)  # fmt: skip
    return result.plan, alternatives(result, service)


def alternatives(result: Planning, service: str) -> list[Alternative]:
    """Every option the planner considered for `service`, plus llama.cpp's own default splits; chosen first."""
    index = result.index_of(service)
    svc, chosen = result.services[index], result.chosen[index]
    out = [_from_option(o, o is chosen) for o in result.options[index]]
    if svc.model.kind == "llm":
        out += _default_splits(svc, result)
    out.sort(key=lambda a: (not a.chosen, not a.fits, -(a.decode_tokens_per_s or 0.0)))
    return out


def _from_option(opt: Option, is_chosen: bool) -> Alternative:
    label = {"layer_split": "speed-aware layer split", "pipeline_parallel": "pipeline parallel (speed-aware)"}.get(
        opt.mode, opt.mode.replace("_", " ")
    )
    alternative = Alternative(
        label=label, mode=opt.mode, devices=[d.name for d in opt.devices], device_ids=[d.id for d in opt.devices], layers=list(opt.layers),
        fits=opt.fits(), decode_tokens_per_s=opt.decode, aggregate_tokens_per_s=opt.aggregate, ttft_s=opt.ttft_s,
        memory_gb=[round(m / 1e9, 2) for m in opt.memory_bytes], chosen=is_chosen,
        note="chosen" if is_chosen else ("" if opt.fits() else "does not fit (free − margin)"),
    )  # fmt: skip
    return alternative.with_ranges(opt.est if opt.decode else None)


def _default_splits(svc: Resolved, result: Planning) -> list[Alternative]:
    """What llama.cpp would do by itself on each host: -ts proportional to free memory, and equal shares."""
    gpus = sorted((d for d in result.devices if d.kind == "gpu"), key=lambda d: d.spec.mem_bandwidth_gb_per_s,
                  reverse=True)  # fmt: skip
    out = []
    for group in by_host(gpus).values():
        if len(group) < 2:
            continue
        n = svc.model.n_layers
        for label, layers in (
            ("llama.cpp default split (-ts ∝ free memory)", splitmod.memory_proportional_split(group, n)),
            ("even split", splitmod.even_split(len(group), n)),
        ):
            links = links_for(result.spec, group, result.sockets)
            est = estimate(svc.model, svc.quant, Placement(mode="layer_split", devices=tuple(group), layers=layers),
                           svc.workload, links, result.calibration)  # fmt: skip
            fits = all(d.memory_bytes <= usable_bytes(dev) for d, dev in zip(est.devices, group, strict=True))
            out.append(Alternative(
                label=label, mode="layer_split", devices=[d.name for d in group], device_ids=[d.id for d in group], layers=list(layers), fits=fits,
                decode_tokens_per_s=est.decode_tokens_per_s, aggregate_tokens_per_s=est.aggregate_tokens_per_s,
                ttft_s=est.ttft_s, memory_gb=[round(d.memory_bytes / 1e9, 2) for d in est.devices],
                note="" if fits else "does not fit (free − margin)",
            ).with_ranges(est))  # fmt: skip
    return out
