"""The supervisor behind `gpumix up`: starts every engine pinned to its devices, watches health, restarts
crashed processes with exponential backoff, writes state.json, and stops everything on SIGINT/SIGTERM.

One thread, one loop: each tick starts what is due, reaps what exited, probes health and writes the state.
Children run in their own process group (so a signal reaches their helpers too) and get SIGTERM from the
kernel if the supervisor dies without cleaning up (PR_SET_PDEATHSIG, tied to the thread that started them:
run the supervisor on the main thread), so no orphan keeps a GPU busy.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from gpumix.launch.spec import LaunchSpec
from gpumix.plan.result import Plan
from gpumix.run.state import SUPERVISOR_LOG, ProcessStatus, RunState, write_state

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@dataclass(frozen=True)
class SupervisorSettings:
    stagger_gpu_s: float = 10.0  # between GPU process starts (VISION.md: stagger ~10 s against power surges)
    stagger_cpu_s: float = 0.0
    health_timeout_s: float = 300.0  # from process start to first healthy answer
    health_interval_s: float = 2.0  # probe period once healthy
    stop_timeout_s: float = 10.0  # SIGTERM → SIGKILL
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 30.0
    stable_after_s: float = 30.0  # healthy this long → the backoff resets
    poll_s: float = 0.2


@dataclass
class _Child:
    status: ProcessStatus
    spec_env: dict[str, str]
    cwd: str | None
    is_gpu: bool
    start_at: float | None = None  # when to (re)start; None = not scheduled
    popen: subprocess.Popen | None = None
    failures: int = 0  # consecutive crashes, for the backoff
    next_probe_at: float = 0.0
    log_handle: IO[bytes] | None = field(default=None, repr=False)


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: the kernel sends SIGTERM when the supervisor goes away."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def gateway_argv(plan_path: Path, port: int, specs: list[LaunchSpec]) -> list[str]:
    """The gateway in front of the server processes (RPC workers answer no endpoint); it reads the plan in the run
    directory, and that directory's state.json for its dashboard."""
    servers = [spec for spec in specs if spec.role == "server"]
    backends = [arg for spec in servers for arg in ("--backend", f"{spec.service}={spec.url}")]
    return [sys.executable, "-m", "gpumix", "gateway", "--plan", str(plan_path), "--port", str(port),
            "--run-dir", str(plan_path.parent), *backends]  # fmt: skip


def gateway_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("gpumix.cli.gateway_cmds") is not None


class Supervisor:
    def __init__(
        self,
        plan: Plan,
        specs: list[LaunchSpec],
        run_dir: Path,
        plan_path: Path,
        front_port: int | None,
        settings: SupervisorSettings | None = None,
        gateway: list[str] | None = None,
        message: str | None = None,
        host: str | None = None,
    ) -> None:
        self.plan = plan
        self.run_dir = run_dir
        self.settings = settings or SupervisorSettings()
        self.children = [self._child(spec) for spec in specs]
        self.gateway = self._gateway_child(gateway, front_port) if gateway else None
        self._stop_requested = False
        self.state = RunState(
            supervisor_pid=os.getpid(),
            started_at=time.time(),
            plan_path=str(plan_path),
            front_port=front_port if gateway else None,
            message=message,
            host=host,
            processes=[c.status for c in self._all()],
        )

    # ---- setup -------------------------------------------------------------------------------------------
    def _child(self, spec: LaunchSpec) -> _Child:
        status = ProcessStatus(
            name=spec.name, service=spec.service, port=spec.port, url=spec.url, health_url=spec.health_url,
            log=str(self.run_dir / "logs" / f"{spec.name}.log"), argv=spec.argv, env=spec.env, devices=spec.devices,
        )  # fmt: skip
        return _Child(status, spec.env, spec.cwd, spec.uses_gpu)

    def _gateway_child(self, argv: list[str], port: int | None) -> _Child:
        status = ProcessStatus(
            name="gateway", service="gateway", kind="gateway", port=port or 0, url=f"http://127.0.0.1:{port}",
            health_url=f"http://127.0.0.1:{port}/health", log=str(self.run_dir / "logs" / "gateway.log"), argv=argv,
        )  # fmt: skip
        return _Child(status, {}, None, False)

    def _all(self) -> list[_Child]:
        return self.children + ([self.gateway] if self.gateway else [])

    # ---- main loop ---------------------------------------------------------------------------------------
    def request_stop(self, *_args: object) -> None:
        self._stop_requested = True

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def run(self) -> int:
        """Run until asked to stop; returns the exit code for the process."""
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        self._schedule_initial_starts(time.monotonic())
        self._write()
        try:
            while not self._stop_requested:
                self.tick(time.monotonic())
                time.sleep(self.settings.poll_s)
        finally:
            self.stop_all()
        return 0

    def _schedule_initial_starts(self, now: float) -> None:
        """GPU processes start stagger_gpu_s apart (first one at once); CPU ones stagger_cpu_s apart."""
        offset = 0.0
        first = True
        for child in self.children:
            if not first:
                offset += self.settings.stagger_gpu_s if child.is_gpu else self.settings.stagger_cpu_s
            child.start_at = now + offset
            first = False

    def tick(self, now: float) -> None:
        for child in self._all():
            self._reap(child, now)
            if child.popen is None and child.start_at is not None and now >= child.start_at:
                self._start(child, now)
            elif child.popen is not None:
                self._probe(child, now)
        gateway = self.gateway
        gateway_due = gateway is not None and gateway.start_at is None and gateway.popen is None
        if gateway is not None and gateway_due and all(c.status.healthy_at is not None for c in self.children):
            gateway.start_at = now
        self._write()

    # ---- one child ---------------------------------------------------------------------------------------
    def _start(self, child: _Child, now: float) -> None:
        st = child.status
        log_path = Path(st.log)
        if child.log_handle is None:
            child.log_handle = log_path.open("ab")
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        child.log_handle.write(f"\n==== gpumix: starting {st.name} at {stamp}: {' '.join(st.argv)}\n".encode())
        child.log_handle.flush()
        env = os.environ.copy() | child.spec_env
        try:
            child.popen = subprocess.Popen(
                st.argv, env=env, cwd=child.cwd, stdin=subprocess.DEVNULL, stdout=child.log_handle,
                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent,
            )  # fmt: skip
        except OSError as exc:
            st.last_error = f"cannot start: {exc}"
            st.state = "failed"
            child.start_at = None
            return
        st.pid = child.popen.pid
        st.state = "starting"
        st.started_at = time.time()
        st.healthy_at = None
        child.start_at = None
        child.next_probe_at = now

    def _reap(self, child: _Child, now: float) -> None:
        if child.popen is None:
            return
        code = child.popen.poll()
        if code is None:
            return
        _signal_group(child.popen, signal.SIGKILL)  # helpers the crashed leader left in its group
        st = child.status
        stable = st.healthy_at is not None and time.time() - st.healthy_at >= self.settings.stable_after_s
        child.failures = 1 if stable else child.failures + 1
        delay = min(self.settings.backoff_max_s, self.settings.backoff_initial_s * 2 ** (child.failures - 1))
        st.last_exit_code = code
        st.last_error = f"exited with code {code}" if code >= 0 else f"killed by signal {-code}"
        st.state = "backoff"
        st.pid = None
        st.restarts += 1
        child.popen = None
        child.start_at = now + delay
        self._log(child, f"{st.last_error}; restart #{st.restarts} in {delay:g} s")

    def _probe(self, child: _Child, now: float) -> None:
        if now < child.next_probe_at or child.popen is None:
            return
        st = child.status
        if st.state == "healthy" and st.health_url.startswith("tcp://"):
            # ggml-rpc-server serves one client at a time with a listen backlog of 1 (ggml-rpc transport.cpp): once
            # its llama-server is connected, a probe waits in (or is dropped from) that backlog, so "accepts a
            # connection" no longer means "alive". From its first healthy answer on, staying up is its health.
            return
        ok = _healthy(st.health_url)
        if ok:
            if st.state != "healthy":
                st.healthy_at = time.time()
                self._log(child, "healthy")
            st.state = "healthy"
            child.next_probe_at = now + self.settings.health_interval_s
            return
        if st.state == "healthy":
            st.state = "unhealthy"
            st.last_error = "health check failed after being healthy"
        elif st.state == "starting" and st.started_at and time.time() - st.started_at > self.settings.health_timeout_s:
            st.state = "unhealthy"
            st.last_error = f"not healthy {self.settings.health_timeout_s:g} s after start"
        child.next_probe_at = now + (0.5 if st.state == "starting" else self.settings.health_interval_s)

    def _log(self, child: _Child, text: str) -> None:
        line = f"{child.status.name}: {text}\n"
        if child.log_handle:
            child.log_handle.write(f"==== gpumix: {line}".encode())
            child.log_handle.flush()
        with (self.run_dir / SUPERVISOR_LOG).open("a") as log:
            log.write(f"{time.strftime('%H:%M:%S')} {line}")

    # ---- stopping ----------------------------------------------------------------------------------------
    def stop_all(self) -> None:
        """SIGTERM every process group, SIGKILL what is left after stop_timeout_s, reap everything."""
        self.state.stopping = True
        running = [(c, c.popen) for c in self._all() if c.popen is not None]
        for child, popen in running:
            child.status.state = "stopping"
            _signal_group(popen, signal.SIGTERM)
        self._write()
        deadline = time.monotonic() + self.settings.stop_timeout_s
        while any(popen.poll() is None for _, popen in running) and time.monotonic() < deadline:
            time.sleep(0.1)
        for child, popen in running:
            if popen.poll() is None:
                _signal_group(popen, signal.SIGKILL)
                self._log(child, f"did not stop within {self.settings.stop_timeout_s:g} s: SIGKILL")
            popen.wait()
            # A helper left in the group (the leader already gone) is killed too.
            _signal_group(popen, signal.SIGKILL)
        for child in self._all():
            child.status.state = "stopped"
            child.status.pid = None
            child.popen = None
            child.start_at = None
            if child.log_handle:
                child.log_handle.close()
                child.log_handle = None
        self._write()

    def _write(self) -> None:
        write_state(self.run_dir, self.state)


def _signal_group(popen: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(popen.pid, sig)  # start_new_session made the child its own group leader


def _healthy(url: str) -> bool:
    """GET url answers 200; a tcp://HOST:PORT url (ggml-rpc-server) is healthy when it accepts a connection."""
    if url.startswith("tcp://"):
        host, _, port = url.removeprefix("tcp://").rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=1.0):
                return True
        except OSError:
            return False
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False
