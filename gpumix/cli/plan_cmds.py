"""`gpumix plan`, `gpumix compare`, `gpumix explain`: thin views over gpumix.plan."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from gpumix.cli.calibration_option import CALIBRATION_HELP, cli_calibration
from gpumix.errors import GpumixError
from gpumix.plan.result import Plan
from gpumix.units import GB

console = Console()
OBJECTIVE_HELP = "latency (one stream fastest) | throughput (aggregate tokens/s); overrides the file"


def _objective(value: str | None) -> str | None:
    if value is not None and value not in ("latency", "throughput"):
        raise GpumixError(f"unknown --objective {value!r}", hint="use latency or throughput")
    return value


def _bar(used: int, total: int, width: int = 20) -> str:
    share = min(used / total, 1.0) if total else 0.0
    filled = round(share * width)
    colour = "red" if share > 0.95 else "yellow" if share > 0.8 else "green"
    return f"[{colour}]{'█' * filled}[/]{'░' * (width - filled)} {share * 100:3.0f}%"


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_plan(plan: Plan) -> None:
    status = "[green]feasible[/]" if plan.feasible else "[red]NOT feasible[/]"
    proof = f"optimal ({plan.solver})" if plan.optimal else f"not proven optimal ({plan.solver})"
    console.print(f"[bold]plan[/] {plan.source or ''}: {status}, assignment {proof}")
    for reason in plan.reasons:
        console.print(f"  [red]✗[/] {reason}")
    dev_table = Table(title="devices")
    for col in ("idx", "device", "host", "memory planned / free", "services", "bw util", "£/month"):
        dev_table.add_column(col)
    for dev in plan.devices:
        names = [s.name for s in plan.services if dev.index in s.devices and (s.host == dev.host or s.host is None)]
        dev_table.add_row(
            str(dev.index), dev.name, dev.host or "-",
            f"{_bar(dev.memory_planned_bytes, dev.memory_free_bytes)} {dev.memory_planned_bytes / GB:.1f}/"
            f"{dev.memory_free_bytes / GB:.1f} GB",
            ", ".join(names) or "-", f"{dev.bandwidth_utilisation:.2f}", _fmt(dev.gbp_per_month, 0),
        )  # fmt: skip
    console.print(dev_table)
    svc_table = Table(title="services")
    for col in ("service", "model", "engine", "mode", "devices", "layers / split", "decode t/s", "aggregate t/s",
                "prefill t/s", "TTFT s", "SLO"):  # fmt: skip
        svc_table.add_column(col)
    for svc in plan.services:
        split = "/".join(str(n) for n in svc.layers) if svc.layers else "-"
        if svc.tensor_split:
            split += f" (-ts {','.join(f'{v:g}' for v in svc.tensor_split)})"
        p = svc.predicted
        slo = "-" if not svc.slo else " ".join(
            f"[green]✓[/]{c.metric}" if c.met else f"[red]✗[/]{c.metric} ({(c.margin or -1) * 100:+.0f}%)" for c in svc.slo
        )
        decode = _fmt(p.decode_tokens_per_s) if p.throughput is None else f"{p.throughput:.2f} {p.throughput_unit}"
        svc_table.add_row(
            svc.name, f"{svc.model} {svc.quant}", svc.engine, svc.mode,
            ",".join(str(i) for i in svc.devices) or "[red]none[/]", split, decode,
            _fmt(p.aggregate_tokens_per_s), _fmt(p.prefill_tokens_per_s, 0), _fmt(p.ttft_s, 3), slo,
        )  # fmt: skip
    console.print(svc_table)
    for w in plan.warnings:
        colour = {"error": "red", "warning": "yellow", "info": "cyan"}[w.severity]
        console.print(f"[{colour}]{w.code}[/] {w.message}", highlight=False)
    cost = plan.cost
    console.print(f"cost: £{_fmt(cost.gbp_per_month, 0)}/month, £{_fmt(cost.gbp_per_million_tokens, 3)} per million "
                  "output tokens at the planned throughput")  # fmt: skip


def plan_cmd(
    file: Path = typer.Argument(..., help="Plan file (YAML); see docs/plan-file.md and examples/."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
    objective: str | None = typer.Option(None, "--objective", help=OBJECTIVE_HELP),
    calibration: Path | None = typer.Option(None, "--calibration", help=CALIBRATION_HELP),
    output: Path | None = typer.Option(None, "-o", "--output", help="Write the plan JSON here (for launch/run)."),
) -> None:
    """Decide what runs where, split how, how fast and at what cost."""
    from gpumix.plan.planner import plan_file

    chosen = cli_calibration(calibration)
    plan = plan_file(file, objective=_objective(objective), calibration=chosen.calibration, calibration_name=chosen.name)
    text = plan.model_dump_json(indent=2)
    if output is not None:
        try:
            output.write_text(text + "\n", encoding="utf-8")
        except OSError as exc:
            raise GpumixError(f"cannot write {output}: {exc.strerror}") from None
    if as_json:
        print(text)
    else:
        print_plan(plan)
        if output is not None:
            console.print(f"wrote {output}")


def compare_cmd(
    file: Path = typer.Argument(..., help="Plan file whose services to plan on each option."),
    option: list[str] = typer.Option(None, "--option", help='Hardware option, e.g. "2x RTX 4090" (repeatable).'),
    objective: str | None = typer.Option(None, "--objective", help=OBJECTIVE_HELP),
    calibration: Path | None = typer.Option(None, "--calibration", help=CALIBRATION_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON."),
) -> None:
    """Plan the same services on several hardware options, side by side."""
    from gpumix.plan.compare import DEFAULT_OPTIONS, compare
    from gpumix.plan.spec import load_plan_spec

    spec = load_plan_spec(file)
    rows = compare(spec, option or DEFAULT_OPTIONS, _objective(objective), cli_calibration(calibration).calibration)
    if as_json:
        print(json.dumps([{"option": r.option, "feasible": r.plan.feasible, "slos_met": r.slos_met,
                           "slos_total": r.slos_total, "verdict": r.verdict,
                           "gbp_per_month": r.plan.cost.gbp_per_month,
                           "gbp_per_million_tokens": r.plan.cost.gbp_per_million_tokens,
                           "services": {s.name: s.predicted.model_dump() for s in r.plan.services}}
                          for r in rows], indent=2))  # fmt: skip
        return
    table = Table(title=f"compare: {file}")
    for col in ("option", "feasible", "LLM decode t/s", "LLM aggregate t/s", "SLOs met", "£/month", "£/M tokens",
                "verdict"):  # fmt: skip
        table.add_column(col)
    for r in rows:
        llms = [s for s in r.plan.services if s.model_kind == "llm"]
        decode = ", ".join(f"{s.name} {_fmt(s.predicted.decode_tokens_per_s)}" for s in llms) or "-"
        agg = sum(s.predicted.aggregate_tokens_per_s or 0 for s in llms)
        table.add_row(
            r.option, "[green]yes[/]" if r.plan.feasible else "[red]no[/]", decode, _fmt(agg),
            f"{r.slos_met}/{r.slos_total}", _fmt(r.plan.cost.gbp_per_month, 0),
            _fmt(r.plan.cost.gbp_per_million_tokens, 3), r.verdict,
        )  # fmt: skip
    console.print(table)


def explain_cmd(
    file: Path = typer.Argument(..., help="Plan file."),
    service: str = typer.Argument(..., help="Service name in the file."),
    objective: str | None = typer.Option(None, "--objective", help=OBJECTIVE_HELP),
    calibration: Path | None = typer.Option(None, "--calibration", help=CALIBRATION_HELP),
) -> None:
    """Why this placement and split: every alternative considered, with its predicted speed."""
    from gpumix.plan.compare import explain

    chosen = cli_calibration(calibration)
    plan, alternatives = explain(file, service, _objective(objective), chosen.calibration, chosen.name)
    chosen = plan.service(service)
    console.print(f"[bold]{service}[/]: {chosen.model} {chosen.quant} on {chosen.engine}, mode {chosen.mode}, "
                  f"devices {chosen.devices}, objective {chosen.objective}")  # fmt: skip
    table = Table(title="alternatives considered")
    for col in ("", "placement", "devices", "layers", "fits", "decode t/s", "aggregate t/s", "TTFT s", "memory GB"):
        table.add_column(col)
    for a in alternatives:
        table.add_row(
            "[green]→[/]" if a.chosen else "", a.label, " + ".join(a.devices), "/".join(map(str, a.layers)) or "-",
            "yes" if a.fits else "[red]no[/]", _fmt(a.decode_tokens_per_s), _fmt(a.aggregate_tokens_per_s),
            _fmt(a.ttft_s, 3), "/".join(f"{m:.1f}" for m in a.memory_gb),
        )  # fmt: skip
    console.print(table)
    for w in plan.warnings:
        if w.service == service:
            console.print(f"{w.code} {w.message}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("plan")(plan_cmd)
    app.command("compare")(compare_cmd)
    app.command("explain")(explain_cmd)
