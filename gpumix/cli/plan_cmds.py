"""`gpumix plan`, `gpumix compare`, `gpumix explain`: thin views over gpumix.plan."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table
from rich.text import Text

from gpumix.cli.calibration_option import CALIBRATION_HELP, cli_calibration
from gpumix.cli.output import add_row, esc, say, show, styled
from gpumix.cli.params import OBJECTIVE_HELP as _OBJECTIVE_HELP
from gpumix.cli.params import objective as parse_objective
from gpumix.errors import GpumixError
from gpumix.hardware.discovery import LOCAL_MACHINE
from gpumix.kinds import Objective
from gpumix.plan.result import Plan, PlannedService, Suggestion
from gpumix.units import GB

OBJECTIVE_HELP = _OBJECTIVE_HELP + "; overrides the file"


def _objective(value: str | None) -> Objective | None:
    return None if value is None else parse_objective(value)



def _bar(used: int, total: int, width: int = 20) -> Text:
    share = min(used / total, 1.0) if total else 0.0
    filled = round(share * width)
    colour = "red" if share > 0.95 else "yellow" if share > 0.8 else "green"
    return Text.assemble(("█" * filled, colour), f"{'░' * (width - filled)} {share * 100:3.0f}%")


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ranged(value: float | None, low: float | None, high: float | None, digits: int = 1) -> str:
    """'12.3 (10.1–14.0)': a prediction with its 80 % interval, when it has one."""
    if value is None or low is None or high is None:
        return _fmt(value, digits)
    return f"{value:.{digits}f} ({low:.{digits}f}–{high:.{digits}f})"


def kv_text(svc: PlannedService) -> Text | str:
    """KV tokens and the full-context sequences they hold, e.g. `14,800 (1 of 16)`; red when fewer than asked."""
    if svc.kv_cache_tokens is None or svc.max_full_context_sequences is None:
        return "-"
    held = svc.max_full_context_sequences
    text = f"{svc.kv_cache_tokens:,} ({held} of {svc.concurrency})"
    return styled(text, "yellow") if held < svc.concurrency else text


def print_plan(plan: Plan) -> None:
    status = "[green]feasible[/]" if plan.feasible else "[red]NOT feasible[/]"
    proof = f"optimal ({plan.solver})" if plan.optimal else f"not proven optimal ({plan.solver})"
    say(f"[bold]plan[/] {esc(plan.source or '')}: {status}, assignment {esc(proof)}")
    for reason in plan.reasons:
        say(f"  [red]✗[/] {esc(reason)}")
    dev_table = Table(title="devices")
    for col in ("id", "device", "memory planned / free", "services", "bw util", "£/month"):
        dev_table.add_column(col)
    for dev in plan.devices:
        names = [s.name for s in plan.services_on(dev.id)]
        add_row(
            dev_table, dev.id, dev.name,
            Text.assemble(_bar(dev.memory_planned_bytes, dev.memory_free_bytes),
                          f" {dev.memory_planned_bytes / GB:.1f}/{dev.memory_free_bytes / GB:.1f} GB"),
            ", ".join(names) or "-", f"{dev.bandwidth_utilisation:.2f}", _fmt(dev.gbp_per_month, 0),
        )  # fmt: skip
    show(dev_table)
    for dev in plan.devices:
        if dev.assumed:
            say(Text(f"  {dev.id} assumed: {dev.assumed}"))
    svc_table = Table(title="services")
    for col in ("service", "model", "engine", "mode", "devices", "layers / split", "KV tokens (full seqs)",
                "decode t/s", "aggregate t/s", "prefill t/s", "TTFT s", "SLO"):  # fmt: skip
        svc_table.add_column(col)
    for svc in plan.services:
        split = "/".join(str(n) for n in svc.layers) if svc.layers else "-"
        if svc.tensor_split:
            split += f" (-ts {','.join(f'{v:g}' for v in svc.tensor_split)})"
        if svc.replica_concurrency:
            split = "streams " + "/".join(str(n) for n in svc.replica_concurrency)
        p = svc.predicted
        slo = Text("-") if not svc.slo else Text(" ").join(
            Text.assemble(("✓", "green"), c.metric) if c.met
            else Text.assemble(("✗", "red"), f"{c.metric} ({(c.margin or -1) * 100:+.0f}%)")
            for c in svc.slo
        )  # fmt: skip
        decode = (_ranged(p.decode_tokens_per_s, p.decode_tokens_per_s_low, p.decode_tokens_per_s_high)
                  if p.throughput is None else f"{p.throughput:.2f} {p.throughput_unit}")  # fmt: skip
        add_row(
            svc_table, svc.name, f"{svc.model} {svc.quant}", svc.engine,
            svc.mode + (" (low memory)" if svc.memory_setting == "low" else ""),
            ",".join(svc.devices) or styled("none", "red"), split, kv_text(svc), decode,
            _ranged(p.aggregate_tokens_per_s, p.aggregate_tokens_per_s_low, p.aggregate_tokens_per_s_high),
            _ranged(p.prefill_tokens_per_s, p.prefill_tokens_per_s_low, p.prefill_tokens_per_s_high, 0),
            _ranged(p.ttft_s, p.ttft_s_low, p.ttft_s_high, 3), slo,
        )  # fmt: skip
    show(svc_table)
    if any(s.predicted.decode_tokens_per_s_low is not None for s in plan.services):
        say("speeds in brackets: 80 % intervals from the calibration's leave-GPUs-out residuals")
    for w in plan.warnings:
        colour = {"error": "red", "warning": "yellow", "info": "cyan"}[w.severity]
        say(f"[{colour}]{w.code}[/] {esc(w.message)}")
    cost = plan.cost
    say(f"cost: £{_fmt(cost.gbp_per_month, 0)}/month, £{_fmt(cost.gbp_per_million_tokens, 3)} per million "
                  "output tokens at the planned throughput")  # fmt: skip
    print_suggestions(plan.suggestions)


def print_suggestions(suggestions: list[Suggestion]) -> None:
    """What would fix it, each change re-planned: feasible ones (cheapest, then fastest, first), then those that
    are not enough."""
    if not suggestions:
        return
    say("[bold]suggestions[/] (each change re-planned; cheapest first, then fastest):")
    for s in suggestions:
        if s.feasible:
            price = "" if s.gbp_per_month is None else f", plan £{s.gbp_per_month:.0f}/month"
            speed = "" if s.decode_tokens_per_s is None else f" → {s.decode_tokens_per_s:.1f} tok/s"
            say(Text.assemble(("  ✓ ", "green"), f"[{s.kind}] {s.change}{speed}{price}"))
    weak = [s for s in suggestions if not s.feasible]
    if weak:
        say(Text("  not enough on its own: " + "; ".join(f"{s.change.split(': ', 1)[-1]}" for s in weak), style="dim"))


def plan_cmd(
    file: Path = typer.Argument(..., help="Plan file (YAML); see docs/plan-file.md and examples/."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
    objective: str | None = typer.Option(None, "--objective", help=OBJECTIVE_HELP),
    calibration: Path | None = typer.Option(None, "--calibration", help=CALIBRATION_HELP),
    output: Path | None = typer.Option(None, "-o", "--output", help="Write the plan JSON here (for launch/run)."),
    html: Path | None = typer.Option(None, "--html", help="Also write the visual report (one offline HTML file)."),
    advice: bool = typer.Option(True, "--advice/--no-advice",
                                help="When a service does not fit or misses its SLO, re-plan changes that fix it."),
) -> None:
    """Decide what runs where, split how, how fast and at what cost."""
    from gpumix.plan.planner import planning_of_file

    chosen = cli_calibration(calibration)
    planning = planning_of_file(file, objective=_objective(objective), calibration=chosen.calibration,
                                calibration_name=chosen.name, discover=LOCAL_MACHINE, advise=advice)  # fmt: skip
    plan = planning.plan
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
            say(Text(f"wrote {output}"))
    if html is not None:
        from gpumix.report.build import ReportOptions, report_of_planning
        from gpumix.report.html import write_report

        options = ReportOptions(objective=_objective(objective), calibration=chosen.calibration,
                                calibration_file=chosen.path, discover=LOCAL_MACHINE)  # fmt: skip
        write_report(report_of_planning(planning, str(file), options), html)
        if not as_json:
            say(Text(f"wrote {html} (the visual report; works offline)"))


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
    chosen = cli_calibration(calibration)
    rows = compare(spec, option or DEFAULT_OPTIONS, _objective(objective), chosen.calibration, chosen.name)
    if as_json:
        print(json.dumps([{"option": r.option, "feasible": r.plan.feasible, "slos_met": r.slos_met,
                           "slos_total": r.slos_total, "verdict": r.verdict,
                           "gbp_per_month": r.plan.cost.gbp_per_month,
                           "gbp_per_million_tokens": r.plan.cost.gbp_per_million_tokens,
                           "services": {s.name: s.predicted.model_dump() for s in r.plan.services}}
                          for r in rows], indent=2))  # fmt: skip
        return
    table = Table(title=Text(f"compare: {file}"))
    for col in ("option", "feasible", "LLM decode t/s", "LLM aggregate t/s", "SLOs met", "£/month", "£/M tokens",
                "verdict"):  # fmt: skip
        table.add_column(col)
    for r in rows:
        llms = [s for s in r.plan.services if s.model_kind == "llm"]
        decode = ", ".join(f"{s.name} {_fmt(s.predicted.decode_tokens_per_s)}" for s in llms) or "-"
        agg = sum(s.predicted.aggregate_tokens_per_s or 0 for s in llms)
        add_row(
            table, r.option, styled("yes", "green") if r.plan.feasible else styled("no", "red"), decode, _fmt(agg),
            f"{r.slos_met}/{r.slos_total}", _fmt(r.plan.cost.gbp_per_month, 0),
            _fmt(r.plan.cost.gbp_per_million_tokens, 3), r.verdict,
        )  # fmt: skip
    show(table)


def explain_cmd(
    file: Path = typer.Argument(..., help="Plan file."),
    service: str = typer.Argument(..., help="Service name in the file."),
    objective: str | None = typer.Option(None, "--objective", help=OBJECTIVE_HELP),
    calibration: Path | None = typer.Option(None, "--calibration", help=CALIBRATION_HELP),
) -> None:
    """Why this placement and split: every alternative considered, with its predicted speed."""
    from gpumix.plan.compare import explain

    picked = cli_calibration(calibration)
    plan, alternatives = explain(file, service, _objective(objective), picked.calibration, picked.name,
                                 discover=LOCAL_MACHINE)  # fmt: skip
    chosen = plan.service(service)
    say(f"[bold]{esc(service)}[/]: {esc(chosen.model)} {esc(chosen.quant)} on {chosen.engine}, mode {chosen.mode}, "
        f"devices {esc(', '.join(chosen.devices) or '-')}, objective {chosen.objective}")  # fmt: skip
    for line in kv_lines(chosen):
        say(Text(line))
    table = Table(title="alternatives considered")
    for col in ("", "placement", "devices", "layers", "fits", "KV tokens", "decode t/s", "aggregate t/s", "TTFT s",
                "memory GB"):  # fmt: skip
        table.add_column(col)
    for a in alternatives:
        add_row(
            table, styled("→", "green") if a.chosen else "", a.label,
            " + ".join(f"{i} {n}" for i, n in zip(a.device_ids, a.devices, strict=True)),
            "/".join(map(str, a.layers)) or "-", "yes" if a.fits else styled("no", "red"),
            "+".join(f"{t:,}" for t in a.kv_tokens) or "-",
            _ranged(a.decode_tokens_per_s, a.decode_tokens_per_s_low, a.decode_tokens_per_s_high),
            _ranged(a.aggregate_tokens_per_s, a.aggregate_tokens_per_s_low, a.aggregate_tokens_per_s_high),
            _ranged(a.ttft_s, a.ttft_s_low, a.ttft_s_high, 3), "/".join(f"{m:.1f}" for m in a.memory_gb),
        )  # fmt: skip
    show(table)
    if any(a.decode_tokens_per_s_low is not None for a in alternatives):
        say("speeds in brackets: 80 % intervals from the calibration's leave-GPUs-out residuals")
    for w in plan.warnings:
        if w.service == service:
            say(Text(f"{w.code} {w.message}"))


def kv_lines(svc: PlannedService) -> list[str]:
    """What the chosen placement's KV holds, per replica when it has several."""
    if svc.kv_cache_tokens is None or svc.max_full_context_sequences is None:
        return []
    lines = [f"KV: {svc.kv_cache_tokens:,} tokens = {svc.max_full_context_sequences} sequences of {svc.context:,} "
             f"tokens at once (concurrency {svc.concurrency}; predictions use {svc.predicted.concurrency})"]  # fmt: skip
    for device, share, streams, tokens in zip(svc.devices, svc.replica_shares, svc.replica_concurrency,
                                              svc.replica_kv_cache_tokens, strict=False):  # fmt: skip
        lines.append(f"  replica on {device}: {share:.0%} of the streams ({streams}), KV {tokens:,} tokens = "
                     f"{tokens // svc.context} sequences")  # fmt: skip
    return lines


def register(app: typer.Typer) -> None:
    app.command("plan")(plan_cmd)
    app.command("compare")(compare_cmd)
    app.command("explain")(explain_cmd)
