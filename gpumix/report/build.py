"""What a report shows, computed once: the plan (made on the fly from a plan file, or read from plan.json), the
split-vs-speed curve of each layer-split service, the `compare` options and tune's measured points.

The result is a plain JSON-able dict (`ReportData`) that the HTML and PNG writers draw; nothing here draws.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpumix.errors import GpumixError
from gpumix.report import plan_fields as pf

ReportData = dict[str, Any]
PLAN_SUFFIXES_YAML = (".yaml", ".yml")
MAX_PLAN_JSON_BYTES = 50_000_000
CURVE_MODES = ("layer_split", "pipeline_parallel")


@dataclass(frozen=True)
class ReportOptions:
    objective: str | None = None
    calibration: Path | None = None  # a `gpumix tune` calibration file, used for planning and its measured points
    tune_result: Path | None = None  # `gpumix tune --json` output: its measured split points
    compare: bool = True
    compare_options: Sequence[str] | None = None  # default: gpumix.plan.compare.DEFAULT_OPTIONS


# ---- loading -------------------------------------------------------------------------------------------------
def load_plan_input(path: Path, options: ReportOptions) -> tuple[pf.Doc, Path | None]:
    """The plan as JSON, and the plan file (YAML) it came from when that file is at hand (curves and compare
    need it). A YAML file is planned now; a plan.json is checked for its format version first."""
    if not path.exists():
        raise GpumixError(f"{path} does not exist", hint="pass a plan file (YAML) or a plan.json from `gpumix plan -o`")
    if path.is_dir():
        raise GpumixError(f"{path} is a directory", hint="pass a plan file (YAML) or a plan.json")
    if path.suffix.lower() in PLAN_SUFFIXES_YAML:
        from gpumix.plan.planner import plan_file

        plan = plan_file(path, objective=options.objective, calibration=options.calibration)
        return plan.model_dump(mode="json"), path
    return read_plan_json(path), _source_file(path)


def read_plan_json(path: Path) -> pf.Doc:
    from pydantic import ValidationError

    from gpumix.plan.result import PLAN_FORMAT_VERSION, Plan

    if path.stat().st_size > MAX_PLAN_JSON_BYTES:
        raise GpumixError(f"{path}: larger than {MAX_PLAN_JSON_BYTES} bytes; not a plan.json")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise GpumixError(f"{path} is not JSON ({exc})",
                          hint="pass a plan file (.yaml) or a plan.json written by `gpumix plan FILE -o plan.json`") from None  # fmt: skip
    if not isinstance(doc, dict) or "services" not in doc or "devices" not in doc:
        raise GpumixError(f"{path} is JSON but not a gpumix plan (no devices/services)",
                          hint="write one with `gpumix plan FILE -o plan.json`")  # fmt: skip
    version = pf.format_version(doc)
    if version != PLAN_FORMAT_VERSION:
        age = "older" if version is None or version < PLAN_FORMAT_VERSION else "newer"
        raise GpumixError(
            f"{path}: plan format_version {version} is {age} than this gpumix reads ({PLAN_FORMAT_VERSION})",
            hint=f"re-plan it: `gpumix plan {doc.get('source') or 'FILE.yaml'} -o {path.name}`",
        )
    try:
        return Plan.model_validate(doc).model_dump(mode="json")
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise GpumixError(f"{path}: field '{where}': {first['msg']}", hint="re-plan it with `gpumix plan FILE -o plan.json`") from None


def _source_file(plan_json: Path) -> Path | None:
    """The plan file a plan.json names as its source, looked for as written and beside the plan.json."""
    try:
        source = json.loads(plan_json.read_text(encoding="utf-8")).get("source")
    except (OSError, ValueError, AttributeError):
        return None
    if not source:
        return None
    for candidate in (Path(source), plan_json.parent / source, plan_json.parent / Path(source).name):
        if candidate.is_file() and candidate.suffix.lower() in PLAN_SUFFIXES_YAML:
            return candidate
    return None


# ---- the report's data ----------------------------------------------------------------------------------------
def build_report(path: Path, options: ReportOptions = ReportOptions()) -> ReportData:
    """Plan (or read) `path` and gather every view's data."""
    doc, spec_path = load_plan_input(path, options)
    return report_data(doc, spec_path, str(path), options)


def report_data(doc: pf.Doc, spec_path: Path | None, name: str, options: ReportOptions = ReportOptions()) -> ReportData:
    """Every view's data for a plan already made (`gpumix plan FILE --html` passes its own)."""
    data: ReportData = {"input": name, "plan": doc, "curves": [], "compare": None, "notes": []}
    if spec_path is None:
        data["notes"].append(f"{name} names no plan file that exists here, so the split curves and the compare "
                             "options are left out: pass the plan file (YAML) to include them")  # fmt: skip
        return data
    data["curves"] = split_curves(spec_path, doc, options)
    if options.compare:
        data["compare"] = compare_options(spec_path, doc, options)
    return data


def split_curves(spec_path: Path, doc: pf.Doc, options: ReportOptions) -> list[dict[str, Any]]:
    """For each layer-split service: predicted decode and aggregate tokens/s over every split of its layers
    between its two devices, with the speed-aware (planned), memory-proportional (llama.cpp's default) and even
    splits marked; for three or more devices only those three points."""
    split_services = [s for s in pf.services(doc) if s.get("mode") in CURVE_MODES and len(pf.service_layers(s)) >= 2]
    if not split_services:
        return []
    from gpumix.estimate import estimate
    from gpumix.estimate.calibration import load_calibration
    from gpumix.estimate.types import Placement
    from gpumix.plan import planner
    from gpumix.plan import split as splitmod
    from gpumix.plan.spec import load_plan_with_lines

    spec, lines = load_plan_with_lines(spec_path)
    cal = load_calibration(options.calibration)
    devices, sockets = planner.build_devices(spec, str(spec_path), lines)
    by_id = {pf.device_id({"host": d.host, "kind": d.kind, "index": d.index}): d for d in devices}
    names = [e.name for e in spec.services]
    measured = _measured_points(options)
    curves = []
    for planned in split_services:
        if planned["name"] not in names:
            continue
        index = names.index(planned["name"])
        svc = planner.resolve_service(spec.services[index], index, spec, str(spec_path), lines, options.objective)
        group = [by_id[i] for i in pf.service_device_ids(doc, planned) if i in by_id]
        if len(group) != len(pf.service_layers(planned)):
            continue
        links = planner.links_for(spec, group, sockets)
        n = sum(pf.service_layers(planned))

        def point(layers: Sequence[int], svc=svc, group=group, links=links, mode=planned["mode"]) -> dict[str, Any]:
            est = estimate(svc.model, svc.quant, Placement(mode=mode, devices=tuple(group), layers=tuple(layers)),
                           svc.workload, links, cal)  # fmt: skip
            fits = all(d.memory_bytes <= splitmod.usable_bytes(dev) for d, dev in zip(est.devices, group, strict=True))
            return {"layers": list(layers), "decode": round(est.decode_tokens_per_s, 3),
                    "aggregate": round(est.aggregate_tokens_per_s, 3), "fits": fits}  # fmt: skip

        marks = {
            "speed-aware (planned)": point(pf.service_layers(planned)),
            "memory-proportional (llama.cpp default)": point(splitmod.memory_proportional_split(group, n)),
            "even": point(splitmod.even_split(len(group), n)),
        }
        sweep = [point((k, n - k)) for k in range(1, n)] if len(group) == 2 else []
        curves.append({
            "service": planned["name"], "devices": [d.name for d in group],
            "device_ids": pf.service_device_ids(doc, planned), "n_layers": n, "objective": svc.objective,
            "concurrency": svc.workload.parallel, "sweep": sweep, "marks": marks,
            "measured": [m for m in measured if _measured_matches(m, group, n)],
        })  # fmt: skip
    return curves


def _measured_points(options: ReportOptions) -> list[dict[str, Any]]:
    """tune's measurements: each device alone from the calibration file, every measured split from a
    `gpumix tune --json` result. Each point: device names in layer order, layers, tokens/s."""
    points: list[dict[str, Any]] = []
    if options.calibration is not None:
        try:
            cal = json.loads(options.calibration.read_text())
        except (OSError, ValueError) as exc:
            raise GpumixError(f"cannot read calibration file {options.calibration}: {exc}") from None
        for dev in cal.get("devices") or []:
            m = dev.get("measured") or {}
            if m.get("tokens_per_s") and m.get("n_layers"):
                points.append({"devices": [dev.get("match", ""), dev.get("name", "")], "alone": True,
                               "n_layers": int(m["n_layers"]), "tokens_per_s": float(m["tokens_per_s"]),
                               "source": str(options.calibration)})  # fmt: skip
    if options.tune_result is not None:
        try:
            result = json.loads(options.tune_result.read_text())
        except (OSError, ValueError) as exc:
            raise GpumixError(f"cannot read tune result {options.tune_result}: {exc}",
                              hint="write it with `gpumix tune ... --json > tune.json`") from None  # fmt: skip
        labels = [d.get("label") or d.get("name") for d in result.get("devices") or []]
        for p in result.get("points") or []:
            if p.get("measured") and p.get("layers") and p.get("tokens_per_s"):
                points.append({"devices": labels, "alone": False, "layers": [int(v) for v in p["layers"]],
                               "n_layers": sum(int(v) for v in p["layers"]), "tokens_per_s": float(p["tokens_per_s"]),
                               "source": str(options.tune_result)})  # fmt: skip
    return points


def _measured_matches(point: dict[str, Any], group: Sequence[Any], n_layers: int) -> bool:
    if point["n_layers"] != n_layers:
        return False
    keys = [{d.spec.id.lower(), d.spec.name.lower(), d.name.lower()} for d in group]
    if point["alone"]:
        return any(k.lower() in ks for k in point["devices"] for ks in keys)
    return len(point["devices"]) == len(group) and all(
        (label or "").lower() in ks for label, ks in zip(point["devices"], keys, strict=True)
    )


def compare_options(spec_path: Path, doc: pf.Doc, options: ReportOptions) -> dict[str, Any]:
    """`gpumix compare` on the plan file's services: £/month and aggregate LLM tokens/s per hardware option,
    with this plan's own hardware as one more point."""
    from gpumix.plan.compare import DEFAULT_OPTIONS, compare
    from gpumix.plan.spec import load_plan_spec

    spec = load_plan_spec(spec_path)
    rows = compare(spec, list(options.compare_options or DEFAULT_OPTIONS), options.objective, options.calibration)
    out = [_compare_row("this plan", doc, None, None, "")]
    for r in rows:
        out.append(_compare_row(r.option, r.plan.model_dump(mode="json"), r.slos_met, r.slos_total, r.verdict))
    return {"source": str(spec_path), "rows": out}


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
