"""No orphans: Ctrl-C / SIGTERM stop every child, and a supervisor killed hard takes its children with it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from gpumix.run.state import read_state

SCRIPT = Path(__file__).parent / "supervise_fakes.py"


def _start(run_dir: Path) -> tuple[subprocess.Popen, list[int]]:
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(run_dir), "a", "b"], cwd=SCRIPT.parent)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = read_state(run_dir) if (run_dir / "state.json").exists() else None
        if state and all(p.state == "healthy" for p in state.processes):
            return proc, [p.pid for p in state.processes]
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("fake services did not become healthy")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _gone(pids: list[int], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not any(_alive(pid) for pid in pids):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_every_child(tmp_path, sig):
    proc, pids = _start(tmp_path)
    proc.send_signal(sig)
    assert proc.wait(timeout=15) == 0
    assert _gone(pids)
    assert all(p.state == "stopped" and p.pid is None for p in read_state(tmp_path).processes)


def test_children_die_with_a_supervisor_killed_hard(tmp_path):
    proc, pids = _start(tmp_path)
    proc.kill()  # SIGKILL: no handler runs; PR_SET_PDEATHSIG makes the kernel SIGTERM the children
    proc.wait(timeout=10)
    assert _gone(pids)
