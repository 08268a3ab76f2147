"""`gpumix up PLAN --ray ADDRESS|auto`: run a plan's services on the hosts of a Ray cluster, keep serving when a
host dies, and bring services back when it returns.

One process on the head machine (the gateway machine) does it all; `--detach` runs it in the background:

1. connects to the cluster as a Ray driver, checks that every plan host is there with the plan's devices;
2. starts each part (gpumix/cluster/deploy.py) as a detached, named host agent pinned to its host and devices;
   the parts of a split across hosts are reserved together (a placement group), RPC workers first;
3. waits until every engine is healthy, writes the gateway's backends file and runs the gateway here under the
   local supervisor (requests go from the gateway straight to the engines: Ray is not in the request path);
4. runs the **controller** (a thread of this process): Ray's node table (read every 0.25 s) says which hosts are dead;
   their parts leave the backends file at once, the lost services are re-planned on the surviving hosts' free
   capacity (gpumix.plan.replan) and started, and what could not be placed is reported (ray.json events, log);
   a split whose part died is restarted as a whole; when a dead host comes back, its services return and their
   stand-ins are drained and stopped (unless `--no-return`).

Why a thread of the `up` process and not a detached controller actor: the controller's one output is the
gateway's backends file, and the gateway is a child of this process on this machine; one process owns both,
so they share a lifetime and a log, and `gpumix down` (SIGTERM to it) stops the controller before anything it
would react to. The agents are detached actors, so a crash of this process leaves the engines serving; `down`
then stops them through Ray by their recorded names.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpumix.cluster.agent import agent_names, get_agent
from gpumix.cluster.controller import Controller
from gpumix.cluster.deploy import (
    BACKENDS_FILE,
    SPEC_COPY,
    RayRun,
    check_plan_hosts,
    deployment_name,
    read_ray_run,
    write_ray_run,
)
from gpumix.cluster.deployment import Deployment, RayUpOptions, Say
from gpumix.cluster.driver import DIED, Target, describe_many, resolve_target, stop_agents
from gpumix.errors import GpumixError
from gpumix.plan.result import Plan
from gpumix.run.state import PLAN_FILE, SUPERVISOR_LOG, read_state
from gpumix.run.supervisor import Supervisor, SupervisorSettings, gateway_argv
from gpumix.run.up import refuse_if_running, supervisor_alive

__all__ = ["RayUpOptions", "run_ray", "start_ray_detached", "stop_ray", "ray_status"]


# ---- running it --------------------------------------------------------------------------------------------
def prepare_run_dir(plan: Plan, options: RayUpOptions) -> Path | None:
    """The run dir with plan.json and (for re-planning) a copy of the plan file; returns the copy's path."""
    run_dir = options.run_dir
    refuse_if_running(run_dir)
    from gpumix.netutil import port_is_free

    if not port_is_free(options.front_port):
        raise GpumixError(f"the gateway port {options.front_port} on 127.0.0.1 is taken", hint="pass another --port")
    previous = read_ray_run(run_dir)
    if previous is not None and previous.phase in ("starting", "running") and _pid_alive(previous.pid):
        raise GpumixError(f"gpumix up --ray is already running from {run_dir} (pid {previous.pid})",
                          hint="`gpumix down` first, or pass another --run-dir")  # fmt: skip
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / PLAN_FILE).write_text(plan.model_dump_json(indent=2))
    spec = options.spec_file
    if spec is None or not spec.is_file():
        return None
    copy = run_dir / SPEC_COPY
    if spec.resolve() != copy.resolve():
        shutil.copyfile(spec, copy)
    return copy


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_ray(plan: Plan, options: RayUpOptions, say: Say = print) -> int:
    """Start the deployment, serve it through the gateway here and keep it serving until SIGINT/SIGTERM."""
    check_plan_hosts(plan)
    target = resolve_target(options.ray, options.cluster_dir, options.token_file)
    spec_copy = prepare_run_dir(plan, options)
    run_dir = options.run_dir
    run = RayRun(deployment=deployment_name(options.name or run_dir.name), address=target.address,
                 cluster_dir=target.cluster_dir, token_file=target.token_file,
                 spec_file=str(spec_copy) if spec_copy else None, front_port=options.front_port,
                 next_port=options.base_port, no_return=options.no_return)  # fmt: skip
    write_ray_run(run_dir, run)
    (run_dir / "state.json").unlink(missing_ok=True)
    if spec_copy is None:
        say("note: no plan file to re-plan from: services of a dead host will not be moved")
    try:
        with target.connect() as ray:
            deployment = Deployment(ray=ray, run=run, plan=plan, options=options, run_dir=run_dir, say=say)
            return _serve(deployment, spec_copy)
    except BaseException as exc:
        run.phase = "failed" if run.phase == "starting" else "stopped"
        if run.phase == "failed":
            run.error = exc.message if isinstance(exc, GpumixError) else f"{type(exc).__name__}: {exc}"
        write_ray_run(run_dir, run)
        raise


def _serve(d: Deployment, spec_copy: Path | None) -> int:
    started = time.monotonic()
    d.start()
    d.say(f"every part healthy {time.monotonic() - started:.1f} s after the start")
    gateway = gateway_argv(d.run_dir / PLAN_FILE, d.options.front_port, []) + ["--backends-file", str(d.backends_path)]
    supervisor = Supervisor(d.plan, [], d.run_dir, d.run_dir / PLAN_FILE, d.options.front_port,
                            SupervisorSettings(stagger_gpu_s=0), gateway)  # fmt: skip
    supervisor.install_signal_handlers()
    d.run.phase = "running"
    d.save()
    for part in d.run.parts:
        d.say(f"{part.part}: {part.host} {', '.join(part.devices)} {', '.join(part.urls) or '(rpc worker)'}")
    d.say(f"gateway: http://127.0.0.1:{d.options.front_port}; run dir {d.run_dir}")
    stop = threading.Event()
    controller = Controller(d, spec_copy)
    thread = threading.Thread(target=controller.run, args=(stop,), name="gpumix-controller", daemon=True)
    thread.start()
    try:
        supervisor.run()
    finally:
        stop.set()
        thread.join(timeout=60)
        d.run.phase = "stopping"
        d.save()
        d.say("stopping every host agent")
        d.stop_everything()
        d.run.phase = "stopped"
        d.save()
    return 0


# ---- detached, status, down --------------------------------------------------------------------------------
def start_ray_detached(plan_file: Path, plan: Plan, options: RayUpOptions, wait_s: float | None = None) -> RayRun:
    """Run `run_ray` in a background session of its own; return once every part and the gateway are healthy."""
    check_plan_hosts(plan)
    target = resolve_target(options.ray, options.cluster_dir, options.token_file)  # fail here, in the terminal
    spec_copy = prepare_run_dir(plan, options)
    run_dir = options.run_dir
    for stale in ("ray.json", "state.json"):
        (run_dir / stale).unlink(missing_ok=True)
    argv = [sys.executable, "-m", "gpumix", "up", str(run_dir / PLAN_FILE), "--ray", target.address,
            "--run-dir", str(run_dir), "--port", str(options.front_port), "--base-port", str(options.base_port),
            "--health-timeout-s", str(options.health_timeout_s),
            "--name", deployment_name(options.name or run_dir.name)]  # fmt: skip
    if target.cluster_dir:
        argv += ["--cluster-dir", target.cluster_dir]
    if target.token_file:
        argv += ["--token-file", target.token_file]
    if spec_copy:
        argv += ["--spec-file", str(spec_copy)]
    if options.no_return:
        argv += ["--no-return"]
    if options.agent_dir:
        argv += ["--agent-dir", options.agent_dir]
    with (run_dir / SUPERVISOR_LOG).open("ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    return _wait_running(proc, run_dir, wait_s or options.health_timeout_s + 120)


def _wait_running(proc: subprocess.Popen, run_dir: Path, wait_s: float) -> RayRun:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        time.sleep(0.5)
        run = read_ray_run(run_dir)
        if run is not None and run.phase == "failed":
            proc.wait(timeout=120)
            raise GpumixError(run.error or "up --ray failed; nothing was left running",
                              hint=f"log: {run_dir / SUPERVISOR_LOG}")  # fmt: skip
        if proc.poll() is not None:
            raise GpumixError(f"the `up --ray` process exited (code {proc.returncode}) before the services were healthy",
                              hint=_tail(run_dir / SUPERVISOR_LOG))  # fmt: skip
        state = read_state(run_dir)
        gateway_ok = state is not None and all(p.state == "healthy" for p in state.processes)
        if run is not None and run.phase == "running" and gateway_ok:
            return run
    stop_ray(run_dir)
    raise GpumixError(f"the deployment was not serving within {wait_s:g} s; everything was stopped",
                      hint=f"log: {run_dir / SUPERVISOR_LOG}")  # fmt: skip


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def stop_ray(run_dir: Path, timeout_s: float = 180.0, say: Say = print) -> RayRun | None:
    """`gpumix down` of an `up --ray` run: SIGTERM to the up process (it stops the controller, the gateway and
    every agent); if it is gone or does not finish, the agents are stopped through Ray by their recorded names."""
    run = read_ray_run(run_dir)
    if run is None:
        return None
    state = read_state(run_dir)
    alive = (state is not None and supervisor_alive(state)) or (run.phase in ("starting", "running", "stopping") and _pid_alive(run.pid))
    if alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(run.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _pid_alive(run.pid) and time.monotonic() < deadline:
            time.sleep(0.3)
        if _pid_alive(run.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(run.pid, signal.SIGKILL)
    if state is not None:
        from gpumix.run.up import stop

        stop(run_dir, timeout_s=10)  # the gateway, should the up process have died hard
    run = read_ray_run(run_dir) or run
    if run.phase != "stopped":
        _stop_through_ray(run, say)
    return read_ray_run(run_dir) or run


def _stop_through_ray(run: RayRun, say: Say) -> None:
    """The up process died without stopping its agents: stop every agent named after the deployment."""
    target = Target(run.address, run.token_file, run.cluster_dir)
    try:
        with target.connect() as ray:
            names = [n for n in agent_names() if n.startswith(f"{run.deployment}.")]
            handles = [h for h in (get_agent(n) for n in names) if h is not None]
            stop_agents(ray, handles)
            from ray.util import get_placement_group

            for group in {p.group for p in run.parts if p.group}:
                with contextlib.suppress(Exception):
                    ray.util.remove_placement_group(get_placement_group(f"gpumix.{group}"))
            say(f"stopped {len(handles)} host agent(s) of {run.deployment} through Ray")
    except GpumixError as exc:
        say(f"could not reach the cluster to stop the agents of {run.deployment}: {exc.message}")


@dataclass
class PartStatus:
    name: str
    service: str
    host: str
    origin: str
    urls: list[str]
    state: str  # "serving" | "healthy" | "starting" | "dead" | "dropped" | "unknown"
    processes: list[dict[str, Any]] = field(default_factory=list)
    node_ip: str | None = None  # where the agent runs, as it reports itself
    resources: dict[str, float] = field(default_factory=dict)  # the device resources it holds there


def ray_status(run_dir: Path, live: bool = True) -> dict[str, Any] | None:
    """The deployment as recorded, with each agent's state asked from Ray (when the cluster answers)."""
    run = read_ray_run(run_dir)
    if run is None:
        return None
    state = read_state(run_dir)
    reports: dict[str, Any] = {}
    error = None
    if live and run.phase in ("running", "starting"):
        try:
            with Target(run.address, run.token_file, run.cluster_dir).connect() as ray:
                handles = {p.name: h for p in run.parts if (h := get_agent(p.name)) is not None}
                reports = describe_many(ray, handles, timeout_s=5)
        except GpumixError as exc:
            error = exc.message
    parts = []
    backends = _read_backends(run_dir)
    for part in run.parts:
        report = reports.get(part.name)
        if part.dropped:
            state_name = "dropped"
        elif report == DIED:
            state_name = "dead"
        elif isinstance(report, dict):
            serving = any(u in backends for u in part.urls) if part.urls else True  # an RPC worker serves its split
            state_name = "serving" if report["healthy"] and serving else ("healthy" if report["healthy"] else "starting")
        else:
            state_name = "dead" if part.host in run.dead_hosts else "unknown"
        live_report = report if isinstance(report, dict) else {}
        parts.append(PartStatus(part.part, part.service, part.host, part.origin, part.urls, state_name,
                                live_report.get("processes", []), live_report.get("node_ip"),
                                live_report.get("resources", {})))  # fmt: skip
    gateway = state.processes[0].model_dump(mode="json") if state is not None and state.processes else None
    return {
        "deployment": run.deployment, "address": run.address, "phase": run.phase, "error": run.error,
        "pid": run.pid, "running": _pid_alive(run.pid) and run.phase in ("starting", "running"),
        "front_port": run.front_port, "gateway": gateway, "dead_hosts": run.dead_hosts, "node_ips": run.node_ips,
        "parts": [p.__dict__ for p in parts], "events": [e.model_dump(mode="json") for e in run.events[-20:]],
        "cluster_error": error,
    }  # fmt: skip


def _read_backends(run_dir: Path) -> set[str]:
    from gpumix.gateway.config import read_backends_file

    try:
        return {u for urls in read_backends_file(run_dir / BACKENDS_FILE).services.values() for u in urls}
    except GpumixError:
        return set()

