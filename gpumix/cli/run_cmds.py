"""`gpumix up`, `gpumix status`, `gpumix down`: thin wrappers over gpumix.run."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from gpumix.cli.calibration_option import CALIBRATION_HELP, plan_calibration
from gpumix.cli.output import add_row, esc, say, show
from gpumix.run.state import default_run_dir
from gpumix.units import fmt_gib

_RUN_DIR = typer.Option("--run-dir", help="where state.json, plan.json and logs live (default ~/.cache/gpumix/run/default)")


def up(
    file: Annotated[Path, typer.Argument(help="a plan file (YAML, planned first) or a plan.json")],
    detach: Annotated[bool, typer.Option("--detach", "-d", help="return once every service is healthy")] = False,
    port: Annotated[int, typer.Option("--port", help="front (gateway) port")] = 8080,
    stagger_s: Annotated[
        float | None, typer.Option("--stagger-s", help="seconds between process starts (default: 10 on GPUs, 0 on CPU)")
    ] = None,
    health_timeout_s: Annotated[float, typer.Option(help="seconds a process may take to become healthy")] = 300.0,
    gateway: Annotated[bool, typer.Option("--gateway/--no-gateway", help="start `gpumix gateway` on --port")] = True,
    run_dir: Annotated[Path | None, _RUN_DIR] = None,
    host: Annotated[
        str | None, typer.Option("--host", help="the plan host to run here (required when the plan spans several)")
    ] = None,
    calibration: Annotated[Path | None, typer.Option("--calibration", help=CALIBRATION_HELP)] = None,
) -> None:
    """Start every service of a plan pinned to its devices and supervise them (Ctrl-C stops all)."""
    from gpumix.run.up import UpOptions, load_plan, run_foreground, start_detached

    options = UpOptions(run_dir=(run_dir or default_run_dir()).resolve(), front_port=port, stagger_s=stagger_s,
                        health_timeout_s=health_timeout_s, gateway=gateway, host=host)  # fmt: skip
    cal, cal_name = plan_calibration(file, calibration)
    if not detach:
        plan = load_plan(file, cal, cal_name)
        sys.exit(run_foreground(plan, options, say=lambda text: print(text, flush=True)))
    state = start_detached(file, options, calibration=cal, calibration_name=cal_name)
    for proc in state.processes:
        say(Text(f"{proc.name}: healthy at {proc.url} (pid {proc.pid})"))
    if state.message:
        say(Text(state.message))
    say(Text(f"supervisor pid {state.supervisor_pid}; `gpumix status` / `gpumix down` (run dir {options.run_dir})"))


def status(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable")] = False,
    run_dir: Annotated[Path | None, _RUN_DIR] = None,
) -> None:
    """Per-service state, pid, port, restarts, uptime and health; per-device memory and load."""
    from gpumix.run.status import status as read_status

    report = read_status((run_dir or default_run_dir()).resolve())
    if report is None:
        if as_json:
            print(json.dumps({"running": False}))
        else:
            say("nothing is running (no state in the run dir)")
        raise typer.Exit(1)
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
        return
    say(f"supervisor pid {report.supervisor_pid}: {'running' if report.running else 'not running'}"
        + (f"; front port {report.front_port}" if report.front_port else ""))  # fmt: skip
    if report.message:
        say(Text(report.message))
    table = Table(title="services")
    for col in ("name", "state", "pid", "port", "restarts", "uptime", "health", "rss", "cpu"):
        table.add_column(col)
    for p in report.processes:
        add_row(table, p.name, p.state, str(p.pid or "-"), str(p.port), str(p.restarts),
                      f"{p.uptime_s:.0f} s" if p.uptime_s is not None else "-", p.health,
                      fmt_gib(p.rss_bytes) if p.rss_bytes is not None else "-",
                      f"{p.cpu_pct:.0f}%" if p.cpu_pct is not None else "-")  # fmt: skip
    show(table)
    devices = Table(title="devices")
    for col in ("id", "name", "memory used", "load", "source"):
        devices.add_column(col)
    for d in report.devices:
        used = f"{fmt_gib(d.memory_used_bytes)} / {fmt_gib(d.memory_total_bytes or 0)}" if d.memory_used_bytes is not None else "-"
        add_row(devices, d.id, d.name, used, f"{d.utilisation_pct:.0f}%" if d.utilisation_pct is not None else "-", d.source)
    show(devices)
    for line in report.advice:
        say(f"[yellow]imbalance:[/] {esc(line)}")


def down(run_dir: Annotated[Path | None, _RUN_DIR] = None) -> None:
    """Stop the supervisor started by `gpumix up` and wait until every process it started is gone."""
    from gpumix.run.up import stop

    directory = (run_dir or default_run_dir()).resolve()
    state = stop(directory)
    if state is None:
        say(Text(f"nothing to stop in {directory}"))
        return
    say(Text(f"stopped {len(state.processes)} process(es) from {directory}"))


def register(app: typer.Typer) -> None:
    app.command("up")(up)
    app.command("status")(status)
    app.command("down")(down)
