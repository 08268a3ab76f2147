"""Finding and ending the processes of one Ray node, by id, never by name.

`ray stop` kills every Ray process of the machine by name (other users' clusters and test clusters
included), so gpumix does not call it. Each node gpumix starts runs `ray start` as the leader of a new
session; every process Ray starts for that node (gcs_server, raylet, monitor, agents, workers) stays in that
session, and the engines a host agent starts are its descendants. Stopping a node = SIGTERM to those, a
grace period, SIGKILL to what is left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

import psutil

# A pid whose process started this long before the node is a reused pid, not ours.
_CLOCK_SLACK_S = 1.0


def session_processes(session: int, started_at: float) -> list[psutil.Process]:
    """Live processes of a session that started no earlier than the session's leader."""
    found = []
    for proc in psutil.process_iter(["create_time"]):
        try:
            if os.getsid(proc.pid) != session or proc.info["create_time"] < started_at - _CLOCK_SLACK_S:
                continue
            if proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return found


def with_descendants(procs: list[psutil.Process]) -> list[psutil.Process]:
    """The processes and all their descendants (engines of host agents live in sessions of their own)."""
    seen: dict[int, psutil.Process] = {}
    for proc in procs:
        seen.setdefault(proc.pid, proc)
        with contextlib.suppress(psutil.Error):
            for child in proc.children(recursive=True):
                seen.setdefault(child.pid, child)
    return list(seen.values())


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
    return out


def pids_alive(pids: list[int], started_at: float) -> list[int]:
    """Those of `pids` still running as the same processes (not reused ids)."""
    out = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            if proc.create_time() >= started_at - _CLOCK_SLACK_S and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
    return out


def send(procs: list[psutil.Process], sig: int) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)


def terminate(procs: list[psutil.Process], grace_s: float) -> list[int]:
    """SIGTERM, wait up to grace_s for all of them, SIGKILL the rest; returns the pids that needed SIGKILL."""
    send(alive(procs), signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while alive(procs) and time.monotonic() < deadline:
        time.sleep(0.1)
    stubborn = alive(procs)
    send(stubborn, signal.SIGKILL)
    deadline = time.monotonic() + 10.0
    while alive(stubborn) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [p.pid for p in stubborn]
