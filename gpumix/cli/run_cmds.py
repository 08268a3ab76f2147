"""`gpumix up`, `gpumix status`, `gpumix down`: thin wrappers over gpumix.run."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from rich.text import Text

from gpumix.cli.calibration_option import CALIBRATION_HELP, plan_calibration
from gpumix.cli.output import add_row, esc, say, show
from gpumix.run.state import default_run_dir
from gpumix.units import fmt_gib

if TYPE_CHECKING:
    from gpumix.plan.result import Plan

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
    ray: Annotated[
        str | None, typer.Option("--ray", help="run every host's services on a Ray cluster: `auto` (the one "
                                 "`gpumix cluster head/local` started here) or the head's IP:PORT")  # fmt: skip
    ] = None,
    base_port: Annotated[int, typer.Option("--base-port", help="--ray: engines listen on this port and up")] = 8001,
    no_return: Annotated[
        bool, typer.Option("--no-return", help="--ray: services moved off a dead host stay moved when it returns")
    ] = False,
    name: Annotated[str | None, typer.Option("--name", help="--ray: deployment name (default: the run dir's)")] = None,
    cluster_dir: Annotated[Path | None, typer.Option("--cluster-dir", help="--ray auto: the cluster dir")] = None,
    token_file: Annotated[Path | None, typer.Option("--token-file", help="--ray IP:PORT: the cluster token")] = None,
    agent_dir: Annotated[
        str | None, typer.Option("--agent-dir", help="--ray: where host agents keep logs on each host")
    ] = None,
    spec_file: Annotated[Path | None, typer.Option("--spec-file", hidden=True)] = None,
) -> None:
    """Start every service of a plan pinned to its devices and supervise them (Ctrl-C stops all)."""
    from gpumix.run.up import UpOptions, load_plan, run_foreground, start_detached

    cal, cal_name = plan_calibration(file, calibration)
    if ray is not None:
        plan = load_plan(file, cal, cal_name)
        _up_ray(file, plan, ray, detach, port, base_port, health_timeout_s, no_return, name, cluster_dir, token_file,
                agent_dir, spec_file, run_dir)  # fmt: skip
        return
    options = UpOptions(run_dir=(run_dir or default_run_dir()).resolve(), front_port=port, stagger_s=stagger_s,
                        health_timeout_s=health_timeout_s, gateway=gateway, host=host)  # fmt: skip
    if not detach:
        plan = load_plan(file, cal, cal_name)
        sys.exit(run_foreground(plan, options, say=lambda text: print(text, flush=True)))
    state = start_detached(file, options, calibration=cal, calibration_name=cal_name)
    for proc in state.processes:
        say(Text(f"{proc.name}: healthy at {proc.url} (pid {proc.pid})"))
    if state.message:
        say(Text(state.message))
    say(Text(f"supervisor pid {state.supervisor_pid}; `gpumix status` / `gpumix down` (run dir {options.run_dir})"))


def _up_ray(file: Path, plan: Plan, ray: str, detach: bool, port: int, base_port: int, health_timeout_s: float, no_return: bool,
            name: str | None, cluster_dir: Path | None, token_file: Path | None, agent_dir: str | None,
            spec_file: Path | None, run_dir: Path | None) -> None:  # fmt: skip
    from gpumix.cluster.up import RayUpOptions, run_ray, start_ray_detached

    spec = spec_file or (file if file.suffix in (".yaml", ".yml") else Path(plan.source) if plan.source else None)
    options = RayUpOptions(run_dir=(run_dir or default_run_dir()).resolve(), ray=ray, front_port=port,
                           base_port=base_port, health_timeout_s=health_timeout_s, no_return=no_return, name=name,
                           cluster_dir=cluster_dir, token_file=token_file, spec_file=spec, agent_dir=agent_dir)  # fmt: skip
    if not detach:
        sys.exit(run_ray(plan, options, say=lambda text: print(text, flush=True)))
    run = start_ray_detached(file, plan, options)
    for part in run.parts:
        say(Text(f"{part.part}: on {part.host} ({', '.join(part.devices)}) {', '.join(part.urls) or '(rpc worker)'}"))
    say(Text(f"gateway: http://127.0.0.1:{run.front_port}; deployment {run.deployment} on {run.address}; "
             f"`gpumix status` / `gpumix down` (run dir {options.run_dir})"))  # fmt: skip


def status(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable")] = False,
    run_dir: Annotated[Path | None, _RUN_DIR] = None,
) -> None:
    """Per-service state, pid, port, restarts, uptime and health; per-device memory and load."""
    from gpumix.cluster.deploy import read_ray_run
    from gpumix.run.status import status as read_status

    directory = (run_dir or default_run_dir()).resolve()
    if read_ray_run(directory) is not None:
        _status_ray(directory, as_json)
        return
    report = read_status(directory)
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


def _status_ray(directory: Path, as_json: bool) -> None:
    from gpumix.cluster.up import ray_status

    report = ray_status(directory)
    assert report is not None
    if as_json:
        print(json.dumps(report, indent=2))
        return
    say(Text(f"deployment {report['deployment']} on {report['address']}: {report['phase']}"
             + ("" if report["running"] else " (its `up --ray` process is not running)")
             + f"; gateway http://127.0.0.1:{report['front_port']}"))  # fmt: skip
    if report["error"]:
        say(Text(f"error: {report['error']}"))
    if report["cluster_error"]:
        say(Text(f"cluster: {report['cluster_error']}"))
    if report["dead_hosts"]:
        say(Text(f"dead hosts: {', '.join(report['dead_hosts'])}"))
    table = Table(title="parts (host agents)")
    for col in ("part", "service", "host", "origin", "state", "url", "restarts"):
        table.add_column(col)
    for p in report["parts"]:
        restarts = str(sum(proc["restarts"] for proc in p["processes"])) if p["processes"] else "-"
        add_row(table, p["name"], p["service"], p["host"], p["origin"], p["state"], ", ".join(p["urls"]) or "-", restarts)
    show(table)
    for event in report["events"][-10:]:
        say(Text(f"{event['kind']}: {event['message']}"))


def down(run_dir: Annotated[Path | None, _RUN_DIR] = None) -> None:
    """Stop the supervisor started by `gpumix up` and wait until every process it started is gone."""
    from gpumix.cluster.deploy import read_ray_run
    from gpumix.run.up import stop

    directory = (run_dir or default_run_dir()).resolve()
    if read_ray_run(directory) is not None:
        from gpumix.cluster.up import stop_ray

        run = stop_ray(directory, say=lambda text: say(Text(text)))
        parts = len(run.parts) if run else 0
        say(Text(f"stopped deployment {run.deployment if run else '?'}: {parts} host agent(s) and the gateway"))
        return
    state = stop(directory)
    if state is None:
        say(Text(f"nothing to stop in {directory}"))
        return
    say(Text(f"stopped {len(state.processes)} process(es) from {directory}"))


def register(app: typer.Typer) -> None:
    app.command("up")(up)
    app.command("status")(status)
    app.command("down")(down)
