"""`gpumix up` / `gpumix down`: load or make the plan, pre-flight, then supervise in the foreground or detached."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from gpumix.errors import GpumixError
from gpumix.estimate.calibration import Calibration
from gpumix.launch.commands import process_hosts, render_plan, specs_for_host
from gpumix.launch.spec import LaunchSpec
from gpumix.launch.vllm_models import prepare_vllm_models
from gpumix.netutil import free_port
from gpumix.plan.result import Plan, read_plan_json
from gpumix.run.preflight import preflight
from gpumix.run.state import PLAN_FILE, SUPERVISOR_LOG, ProcessStatus, RunState, read_state
from gpumix.run.supervisor import Supervisor, SupervisorSettings, gateway_argv, gateway_available

PLAN_SUFFIXES_JSON = (".json",)
PLAN_SUFFIXES_YAML = (".yaml", ".yml")


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def load_plan(path: Path, calibration: Calibration | None = None, calibration_name: str | None = None) -> Plan:
    """plan.json is read as is (`read_plan_json`); a YAML plan file goes through the planner first, with
    `calibration` (which the CLI resolved; None: the packaged fit) and, for a file without `devices:`, this
    machine's GPUs."""
    if not path.is_file():
        raise GpumixError(f"{path} does not exist", hint="pass a plan file (YAML) or a plan.json from `gpumix plan`")
    if path.suffix in PLAN_SUFFIXES_YAML:
        from gpumix.hardware.discovery import LOCAL_MACHINE
        from gpumix.plan.planner import plan_file

        return plan_file(path, calibration=calibration, calibration_name=calibration_name, discover=LOCAL_MACHINE)
    return read_plan_json(path)


def host_to_run(specs: list[LaunchSpec], host: str | None) -> str | None:
    """Which plan host this `gpumix up` runs: `--host`, or the only one. A plan over several hosts needs --host
    (running all hosts at once, over Ray, is not built yet)."""
    hosts = process_hosts(specs)
    named = ", ".join(str(h) for h in hosts)
    if host is None:
        if len(hosts) > 1:
            raise GpumixError(f"the plan runs processes on several hosts ({named}); `gpumix up` runs one host's",
                              hint=f"on each host run `gpumix up PLAN --host NAME` (NAME one of {named})")  # fmt: skip
        return hosts[0] if hosts else None
    if host not in hosts:
        raise GpumixError(f"--host {host}: the plan runs nothing on that host (its hosts: {named or 'none'})",
                          hint="pass one of the plan's hosts, or leave --host out for a one-machine plan")  # fmt: skip
    return host


def supervisor_alive(state: RunState) -> bool:
    try:
        proc = psutil.Process(state.supervisor_pid)
        # Guard against pid reuse: the process must be at least as old as the run it claims.
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE and proc.create_time() <= state.started_at + 1
    except psutil.Error:
        return False


def refuse_if_running(run_dir: Path) -> None:
    state = read_state(run_dir)
    if state is not None and supervisor_alive(state):
        raise GpumixError(
            f"gpumix is already running from {run_dir} (supervisor pid {state.supervisor_pid})",
            hint="`gpumix down` first, or pass another --run-dir",
        )


def prepare(plan: Plan, front_port: int | None, host: str | None = None,
            say: Callable[[str], object] = _stderr) -> list[LaunchSpec]:  # fmt: skip
    """The processes of `host` (see host_to_run); their models made first (a GGUF for vLLM becomes a safetensors
    directory, once); backends get free loopback ports of their own; then every pre-flight check, before anything
    starts."""
    taken = {front_port}

    def allocate() -> int:
        port = free_port(exclude=taken)
        taken.add(port)
        return port

    specs = render_plan(plan, allocate_port=allocate)
    run_host = host_to_run(specs, host)
    specs = specs_for_host(specs, run_host)
    prepare_vllm_models(plan, say, services={spec.service for spec in specs})
    preflight(plan, specs, front_port, host=run_host)
    return specs


@dataclass(frozen=True)
class UpOptions:
    run_dir: Path
    front_port: int = 8080
    stagger_s: float | None = None  # None: 10 s between GPU starts, 0 between CPU starts
    health_timeout_s: float = 300.0
    gateway: bool = True
    host: str | None = None  # the plan host to run (`--host`); needed when the plan spans several


def settings_for(options: UpOptions) -> SupervisorSettings:
    if options.stagger_s is None:
        return SupervisorSettings(health_timeout_s=options.health_timeout_s)
    return SupervisorSettings(
        stagger_gpu_s=options.stagger_s, stagger_cpu_s=options.stagger_s, health_timeout_s=options.health_timeout_s
    )


def run_foreground(plan: Plan, options: UpOptions, say: Callable[[str], object] = print) -> int:
    """Pre-flight, then supervise here until SIGINT/SIGTERM."""
    run_dir = options.run_dir
    refuse_if_running(run_dir)
    use_gateway = options.gateway and gateway_available()
    specs = prepare(plan, options.front_port if use_gateway else None, options.host, say)
    run_dir.mkdir(parents=True, exist_ok=True)
    plan_path = run_dir / PLAN_FILE
    plan_path.write_text(plan.model_dump_json(indent=2))
    message = None
    gateway = gateway_argv(plan_path, options.front_port, specs) if use_gateway else None
    if not use_gateway:
        message = "gateway not started (gpumix gateway is not available); call the backends directly"
    supervisor = Supervisor(plan, specs, run_dir, plan_path, options.front_port, settings_for(options), gateway, message,
                            host=specs[0].host_name if specs else None)  # fmt: skip
    supervisor.install_signal_handlers()
    for spec in specs:
        say(f"{spec.name}: {spec.engine} {spec.url} (CUDA_VISIBLE_DEVICES={spec.env['CUDA_VISIBLE_DEVICES']!r})")
        for note in spec.notes:
            say(f"  note: {note}")
    say(message or f"gateway: http://127.0.0.1:{options.front_port}")  # message is set when there is no gateway
    say(f"run dir: {run_dir} (logs in {run_dir / 'logs'}); Ctrl-C stops everything")
    return supervisor.run()


def start_detached(
    plan_file: Path,
    options: UpOptions,
    wait_s: float | None = None,
    calibration: Calibration | None = None,
    calibration_name: str | None = None,
) -> RunState:
    """Start the supervisor as a session of its own and return once every process is healthy.

    On failure (a process exits before it is ever healthy, misses its health timeout, or the supervisor dies)
    everything is stopped and a GpumixError carries the failing process's log tail."""
    run_dir = options.run_dir.resolve()
    refuse_if_running(run_dir)
    plan = load_plan(plan_file, calibration, calibration_name)
    use_gateway = options.gateway and gateway_available()
    prepare(plan, options.front_port if use_gateway else None, options.host)  # fail here, in the user's terminal
    run_dir.mkdir(parents=True, exist_ok=True)
    plan_path = run_dir / PLAN_FILE
    plan_path.write_text(plan.model_dump_json(indent=2))
    (run_dir / "state.json").unlink(missing_ok=True)
    argv = [sys.executable, "-m", "gpumix", "up", str(plan_path), "--run-dir", str(run_dir),
            "--port", str(options.front_port), "--health-timeout-s", str(options.health_timeout_s)]  # fmt: skip
    if options.stagger_s is not None:
        argv += ["--stagger-s", str(options.stagger_s)]
    if not options.gateway:
        argv += ["--no-gateway"]
    if options.host is not None:
        argv += ["--host", options.host]
    with (run_dir / SUPERVISOR_LOG).open("ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return _wait_until_healthy(proc, run_dir, wait_s or options.health_timeout_s + 30)


def _wait_until_healthy(proc: subprocess.Popen, run_dir: Path, wait_s: float) -> RunState:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        time.sleep(0.3)
        if proc.poll() is not None:
            raise GpumixError(
                f"the supervisor exited (code {proc.returncode}) before the services were healthy",
                hint=_tail(run_dir / SUPERVISOR_LOG),
            )
        state = read_state(run_dir)
        if state is None:
            continue
        failed = [p for p in state.processes if _failed(p)]
        if failed:
            stop(run_dir)
            raise GpumixError(
                f"{failed[0].name} did not become healthy: {failed[0].last_error}; everything was stopped",
                hint=f"last lines of {failed[0].log}:\n{_tail(Path(failed[0].log))}",
            )
        if state.processes and all(p.state == "healthy" for p in state.processes):
            return state
    stop(run_dir)
    raise GpumixError(f"services were not healthy within {wait_s:g} s; everything was stopped", hint=f"logs in {run_dir / 'logs'}")


def _failed(proc: ProcessStatus) -> bool:
    crashed_before_healthy = proc.last_exit_code is not None and proc.healthy_at is None
    return proc.state in ("unhealthy", "failed") or crashed_before_healthy


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def stop(run_dir: Path, timeout_s: float = 60.0) -> RunState | None:
    """SIGTERM the supervisor and wait until it and every child it started are gone."""
    state = read_state(run_dir)
    if state is None:
        return None
    if supervisor_alive(state):
        with contextlib.suppress(ProcessLookupError):
            os.kill(state.supervisor_pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while supervisor_alive(state) and time.monotonic() < deadline:
            time.sleep(0.2)
        if supervisor_alive(state):
            with contextlib.suppress(ProcessLookupError):
                os.kill(state.supervisor_pid, signal.SIGKILL)
    _kill_leftovers(state)
    return read_state(run_dir)


def _kill_leftovers(state: RunState) -> None:
    """Children of a supervisor that was killed hard: their process groups get SIGKILL."""
    for proc in state.processes:
        if proc.pid is None:
            continue
        try:
            child = psutil.Process(proc.pid)
            if child.create_time() + 1 < state.started_at:  # pid reused by an older process: not ours
                continue
        except psutil.Error:
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(psutil.Error):
            child.wait(timeout=10)
