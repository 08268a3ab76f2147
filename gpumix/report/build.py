"""What a report shows, computed once: the plan, the split-vs-speed curve of each split service, the `compare`
options and tune's measured points.

Everything comes from ONE planning run of the plan file (`gpumix.plan.planner.planning_of_file`): the plan itself
(or, for a plan.json, the plan as read, with its source file planned once for the curves), the curves from
`gpumix.plan.compare.split_curve` on that run. The CLI resolves the calibration and this machine (LocalMachine)
and passes them in `ReportOptions`; nothing here reads the environment or the machine.

The result is a plain JSON-able dict (`ReportData`) that the HTML and PNG writers draw; nothing here draws.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpumix.errors import GpumixError
from gpumix.estimate.calibration import Calibration
from gpumix.hardware.entries import LocalMachine
from gpumix.hardware.spec import Device
from gpumix.kinds import Objective
from gpumix.plan.compare import Alternative, SplitCurve
from gpumix.plan.planning import Planning
from gpumix.plan.result import Plan
from gpumix.report import plan_fields as pf

ReportData = dict[str, Any]
PLAN_SUFFIXES_YAML = (".yaml", ".yml")
# The keys of the three marked splits on a curve (svg.MARK_STYLE draws them).
PLANNED_MARK = "speed-aware (planned)"
MEMORY_PROPORTIONAL_MARK = "memory-proportional (llama.cpp default)"
EVEN_MARK = "even"


@dataclass(frozen=True)
class ReportOptions:
    objective: Objective | None = None
    calibration: Calibration | None = None  # resolved by the CLI (gpumix/cli/calibration_option.py); None: packaged
    calibration_file: Path | None = None  # the file it came from: the plan records it, tune's measured points in it
    tune_result: Path | None = None  # `gpumix tune --json` output: its measured split points
    compare: bool = True
    compare_options: Sequence[str] | None = None  # default: gpumix.plan.compare.DEFAULT_OPTIONS
    discover: LocalMachine | None = None  # this machine, for a plan file without `devices:` (the CLI's LOCAL_MACHINE)

    @property
    def calibration_name(self) -> str | None:
        return None if self.calibration_file is None else str(self.calibration_file)


# ---- loading -------------------------------------------------------------------------------------------------
def is_plan_file(path: Path) -> bool:
    """A plan file (YAML, planned now) rather than a plan.json (already planned)."""
    return path.suffix.lower() in PLAN_SUFFIXES_YAML


def check_input(path: Path) -> None:
    if not path.exists():
        raise GpumixError(f"{path} does not exist", hint="pass a plan file (YAML) or a plan.json from `gpumix plan -o`")
    if path.is_dir():
        raise GpumixError(f"{path} is a directory", hint="pass a plan file (YAML) or a plan.json")


def build_report(path: Path, options: ReportOptions = ReportOptions()) -> ReportData:
    """Plan (or read) `path` and gather every view's data."""
    from gpumix.plan.result import read_plan_json

    check_input(path)
    if is_plan_file(path):
        return report_of_plan_file(path, options)
    return report_of_plan_json(path, read_plan_json(path), options)


def report_of_plan_file(path: Path, options: ReportOptions = ReportOptions()) -> ReportData:
    """A plan file, planned once; the plan, its curves and the compare options all come from that run."""
    return report_of_planning(_plan_once(path, options), str(path), options)


def report_of_plan_json(path: Path, plan: Plan, options: ReportOptions = ReportOptions()) -> ReportData:
    """A plan.json as read; its source plan file, when it is at hand, is planned once for the curves and the
    compare options, with the plan.json's own splits marked as planned."""
    source = _source_file(path, plan.source)
    if source is None:
        data = _data(plan, str(path))
        data["left_out"] = (f"{path} names no plan file that exists here, so the split curves and the compare "
                            "options are left out: pass the plan file (YAML) to include them")  # fmt: skip
        return data
    data = _with_planning(_data(plan, str(path)), plan, _plan_once(source, options), options)
    if plan.calibration != options.calibration_name:
        data["notes"].append(f"{path} was planned with {plan.calibration or 'the packaged fit'}; its split curves and "
                             f"options are predicted with {options.calibration_name or 'the packaged fit'}")  # fmt: skip
    return data


def report_of_planning(planning: Planning, name: str, options: ReportOptions = ReportOptions()) -> ReportData:
    """Every view's data for a planning run already made (`gpumix plan FILE --html` passes its own)."""
    return _with_planning(_data(planning.plan, name), planning.plan, planning, options)


def _plan_once(path: Path, options: ReportOptions) -> Planning:
    from gpumix.plan.planner import planning_of_file

    return planning_of_file(path, objective=options.objective, calibration=options.calibration,
                            calibration_name=options.calibration_name, discover=options.discover)  # fmt: skip


def _data(plan: Plan, name: str) -> ReportData:
    """`left_out`: why the curves and compare options are missing; `notes`: what else the reader should know."""
    return {"input": name, "plan": plan.model_dump(mode="json"), "curves": [], "compare": None, "left_out": None,
            "notes": []}  # fmt: skip


def _with_planning(data: ReportData, plan: Plan, planning: Planning, options: ReportOptions) -> ReportData:
    data["curves"] = split_curves(plan, planning, options)
    if options.compare:
        data["compare"] = compare_options(plan, planning, options)
    return data


def _source_file(plan_json: Path, source: str | None) -> Path | None:
    """The plan file a plan.json names as its source, looked for as written and beside the plan.json."""
    if not source:
        return None
    for candidate in (Path(source), plan_json.parent / source, plan_json.parent / Path(source).name):
        if candidate.is_file() and is_plan_file(candidate):
            return candidate
    return None


# ---- 6. split curves ------------------------------------------------------------------------------------------
def split_curves(plan: Plan, planning: Planning, options: ReportOptions) -> list[dict[str, Any]]:
    """For each split service of `plan`: predicted decode and aggregate tokens/s over every split of its layers
    between its two devices (`gpumix.plan.compare.split_curve` on the planning run), with the planned,
    memory-proportional (llama.cpp's default) and even splits marked; for three or more devices those three."""
    from gpumix.plan.compare import split_curve

    measured = _measured_points(options)
    names = {svc.entry.name for svc in planning.services}
    curves = []
    for svc in plan.services:
        if svc.name not in names:
            continue
        curve = split_curve(planning, svc.name, planned=svc)
        if curve is not None:
            curves.append(_curve_data(curve, [m for m in measured if _measured_matches(m, curve.devices, curve.n_layers)]))
    return curves


def _curve_data(curve: SplitCurve, measured: list[dict[str, Any]]) -> dict[str, Any]:
    marks = {PLANNED_MARK: curve.planned, MEMORY_PROPORTIONAL_MARK: curve.memory_proportional, EVEN_MARK: curve.even}
    return {
        "service": curve.service, "mode": curve.mode, "devices": [d.name for d in curve.devices],
        "device_ids": [d.id for d in curve.devices], "n_layers": curve.n_layers, "objective": curve.objective,
        "concurrency": curve.concurrency, "sweep": [_point(a) for a in curve.sweep],
        "marks": {label: _point(a) for label, a in marks.items() if a is not None}, "measured": measured,
    }  # fmt: skip


def _point(alt: Alternative) -> dict[str, Any]:
    return {"layers": list(alt.layers), "decode": round(alt.decode_tokens_per_s or 0.0, 3),
            "aggregate": round(alt.aggregate_tokens_per_s or 0.0, 3), "fits": alt.fits}  # fmt: skip


def _measured_points(options: ReportOptions) -> list[dict[str, Any]]:
    """tune's measurements: each device alone from the calibration file, every measured split from a
    `gpumix tune --json` result. Each point: device names in layer order, layers, tokens/s."""
    points: list[dict[str, Any]] = []
    if options.calibration_file is not None:
        for dev in _machine_measurements(options.calibration_file):
            m = dev.measured
            if m.get("tokens_per_s") and m.get("n_layers"):
                points.append({"devices": [dev.match, dev.name], "alone": True, "n_layers": int(m["n_layers"]),
                               "tokens_per_s": float(m["tokens_per_s"]), "source": str(options.calibration_file)})  # fmt: skip
    if options.tune_result is not None:
        points += _tune_points(options.tune_result)
    return points


def _machine_measurements(path: Path) -> list[Any]:
    """The per-device entries of a machine calibration (`gpumix tune`); none for a whole fitted calibration."""
    from gpumix.calibrate.files import load_machine_calibration

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = None
    if isinstance(data, dict) and "backends" in data:
        return []  # a fitted calibration (python -m gpumix.calibrate.fit): no measurements of this machine
    return list(load_machine_calibration(path).devices)


def _tune_points(path: Path) -> list[dict[str, Any]]:
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise GpumixError(f"cannot read tune result {path}: {exc}",
                          hint="write it with `gpumix tune ... --json > tune.json`") from None  # fmt: skip
    if not isinstance(result, dict):
        raise GpumixError(f"{path}: not a `gpumix tune --json` result (not a JSON object)",
                          hint="write it with `gpumix tune ... --json > tune.json`")  # fmt: skip
    labels = [d.get("label") or d.get("name") for d in result.get("devices") or []]
    points = []
    for p in result.get("points") or []:
        if p.get("measured") and p.get("layers") and p.get("tokens_per_s"):
            points.append({"devices": labels, "alone": False, "layers": [int(v) for v in p["layers"]],
                           "n_layers": sum(int(v) for v in p["layers"]), "tokens_per_s": float(p["tokens_per_s"]),
                           "source": str(path)})  # fmt: skip
    return points


def _measured_matches(point: dict[str, Any], group: Sequence[Device], n_layers: int) -> bool:
    if point["n_layers"] != n_layers:
        return False
    keys = [{d.spec.id.lower(), d.spec.name.lower(), d.name.lower()} for d in group]
    if point["alone"]:
        return any(k.lower() in ks for k in point["devices"] for ks in keys)
    return len(point["devices"]) == len(group) and all(
        (label or "").lower() in ks for label, ks in zip(point["devices"], keys, strict=True)
    )


# ---- 7. compare -------------------------------------------------------------------------------------------------
def compare_options(plan: Plan, planning: Planning, options: ReportOptions) -> dict[str, Any]:
    """`gpumix compare` on the plan file's services: £/month and aggregate LLM tokens/s per hardware option,
    with this plan's own hardware as one more point."""
    from gpumix.plan.compare import DEFAULT_OPTIONS, compare

    rows = compare(planning.spec, list(options.compare_options or DEFAULT_OPTIONS), options.objective,
                   options.calibration, options.calibration_name)  # fmt: skip
    out = [_compare_row("this plan", plan.model_dump(mode="json"), None, None, "")]
    for r in rows:
        out.append(_compare_row(r.option, r.plan.model_dump(mode="json"), r.slos_met, r.slos_total, r.verdict))
    return {"source": planning.plan.source, "rows": out}


def _compare_row(option: str, doc: pf.Doc, met: int | None, total: int | None, verdict: str) -> dict[str, Any]:
    s = pf.summary(doc)
    llms = [svc for svc in pf.services(doc) if pf.service_model(svc)["kind"] == "llm"]
    checks = [c for svc in pf.services(doc) for c in pf.slo_checks(svc)]
    return {
        "option": option,
        "feasible": s["feasible"],
        "gbp_per_month": s["gbp_per_month"],
        "gbp_per_million_tokens": s["gbp_per_million_tokens"],
        "aggregate_tokens_per_s": round(sum(pf.predicted(x).get("aggregate_tokens_per_s") or 0.0 for x in llms), 2),
        "slos_met": sum(bool(c.get("met")) for c in checks) if met is None else met,
        "slos_total": len(checks) if total is None else total,
        "verdict": verdict or ("feasible" if s["feasible"] else "does not fit"),
    }
