"""`gpumix report`: the plan as one self-contained HTML file (and PNGs): a thin view over gpumix.report."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from gpumix.cli.calibration_option import CALIBRATION_HELP

console = Console()


def report_cmd(
    plan: Path = typer.Argument(..., help="A plan file (YAML, planned now) or a plan.json from `gpumix plan -o`."),
    output: Path = typer.Option(Path("report.html"), "-o", "--output", help="HTML file to write."),
    png: Path | None = typer.Option(None, "--png", help="Also write the memory bars and split curves as PNGs here."),
    objective: str | None = typer.Option(None, "--objective", help="latency | throughput; overrides the file."),
    calibration: Path | None = typer.Option(None, "--calibration", help=CALIBRATION_HELP + " A plan file only (a "
                                            "plan.json uses the one it records). Its measured points are drawn on "
                                            "the split curves."),
    tune_result: Path | None = typer.Option(None, "--tune-result", help="`gpumix tune --json` output: its measured "
                                            "splits are drawn on the matching split curve."),
    no_compare: bool = typer.Option(False, "--no-compare", help="Leave out the hardware options (saves re-planning)."),
) -> None:
    """Write the plan as one HTML file that works offline: memory per card, placement, layer split, predicted
    speed, split curve, hardware options, warnings."""
    from gpumix.cli.calibration_option import cli_calibration, recorded_calibration
    from gpumix.cli.plan_cmds import _objective
    from gpumix.hardware.discovery import LOCAL_MACHINE
    from gpumix.plan.result import read_plan_json
    from gpumix.report.build import ReportOptions, check_input, is_plan_file, report_of_plan_file, report_of_plan_json
    from gpumix.report.html import write_report

    check_input(plan)
    planned = None if is_plan_file(plan) else read_plan_json(plan)
    if planned is None:
        chosen = cli_calibration(calibration)
    else:
        chosen = recorded_calibration(plan, planned.calibration, calibration)
    options = ReportOptions(objective=_objective(objective), calibration=chosen.calibration,
                            calibration_file=chosen.path, tune_result=tune_result, compare=not no_compare,
                            discover=LOCAL_MACHINE)  # fmt: skip
    with console.status("planning the report's views...", spinner="dots"):
        data = report_of_plan_file(plan, options) if planned is None else report_of_plan_json(plan, planned, options)
    write_report(data, output)
    console.print(f"wrote {output} ({output.stat().st_size // 1024} KiB; open it in a browser, works offline)",
                  highlight=False)  # fmt: skip
    if png is not None:
        from gpumix.report.png import write_pngs

        for path in write_pngs(data, png):
            console.print(f"wrote {path}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("report")(report_cmd)
