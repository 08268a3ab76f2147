"""Supervisor behaviour with real child processes (a tiny HTTP server stands in for an engine)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest
from runhelpers import fake_plan, fake_spec

from gpumix.run.state import read_state
from gpumix.run.supervisor import Supervisor, SupervisorSettings

FAST = SupervisorSettings(stagger_gpu_s=0, stagger_cpu_s=0, health_timeout_s=20, health_interval_s=0.2,
                          stop_timeout_s=1.5, backoff_initial_s=0.5, backoff_max_s=2, poll_s=0.05)  # fmt: skip


def _drive(sup: Supervisor, until, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        sup.tick(time.monotonic())
        if until():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out; state: {[(p.name, p.state, p.last_error) for p in sup.state.processes]}")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def supervisor(tmp_path: Path):
    made: list[Supervisor] = []

    def make(specs, settings=FAST) -> Supervisor:
        plan = fake_plan([s.service for s in specs])
        sup = Supervisor(plan, specs, tmp_path, tmp_path / "plan.json", None, settings)
        (tmp_path / "logs").mkdir(exist_ok=True)
        sup._schedule_initial_starts(time.monotonic())
        made.append(sup)
        return sup

    yield make
    for sup in made:
        sup.stop_all()


def test_crashed_process_restarts_with_backoff_and_the_other_keeps_running(supervisor, tmp_path):
    sup = supervisor([fake_spec("a"), fake_spec("b")])
    _drive(sup, lambda: all(p.state == "healthy" for p in sup.state.processes))
    a, b = sup.state.process("a"), sup.state.process("b")
    b_pid = b.pid
    os.kill(a.pid, signal.SIGKILL)
    _drive(sup, lambda: a.restarts == 1)
    assert a.state == "backoff" and a.last_error == "killed by signal 9"
    _drive(sup, lambda: a.state == "healthy")
    assert b.pid == b_pid and b.restarts == 0 and b.state == "healthy"
    # Second crash soon after: the backoff doubles (0.5 s → 1 s).
    os.kill(a.pid, signal.SIGKILL)
    _drive(sup, lambda: a.restarts == 2)
    started = time.monotonic()
    _drive(sup, lambda: a.pid is not None)
    assert time.monotonic() - started >= 0.8
    state = read_state(tmp_path)  # written atomically on every tick
    assert state.process("a").restarts == 2 and state.process("b").restarts == 0
    assert "killed by signal 9; restart #1" in (tmp_path / "logs" / "a.log").read_text()


def test_stop_kills_stubborn_children_and_their_helpers(supervisor, tmp_path):
    pidfile = tmp_path / "helper.pid"
    sup = supervisor([fake_spec("stubborn", "--ignore-sigterm", "--grandchild", str(pidfile))])
    _drive(sup, lambda: sup.state.process("stubborn").state == "healthy")
    leader = sup.state.process("stubborn").pid
    helper = int(pidfile.read_text())
    assert _alive(leader) and _alive(helper)
    started = time.monotonic()
    sup.stop_all()
    assert time.monotonic() - started >= FAST.stop_timeout_s  # SIGTERM was ignored, SIGKILL after the timeout
    time.sleep(0.2)
    assert not _alive(leader) and not _alive(helper)
    assert read_state(tmp_path).process("stubborn").state == "stopped"


def test_never_healthy_process_is_marked_unhealthy(supervisor):
    settings = SupervisorSettings(health_timeout_s=1.0, health_interval_s=0.2, stop_timeout_s=1, poll_s=0.05)
    sup = supervisor([fake_spec("sick", "--unhealthy")], settings)
    _drive(sup, lambda: sup.state.process("sick").state == "unhealthy", timeout_s=15)
    assert "not healthy 1 s after start" in sup.state.process("sick").last_error


def test_missing_binary_marks_the_process_failed_without_touching_others(supervisor):
    good = fake_spec("good")
    bad = fake_spec("bad").model_copy(update={"argv": ["/nonexistent/llama-server"]})
    sup = supervisor([good, bad])
    _drive(sup, lambda: sup.state.process("good").state == "healthy")
    assert sup.state.process("bad").state == "failed" and "cannot start" in sup.state.process("bad").last_error


def test_gpu_processes_are_staggered(supervisor):
    specs = [fake_spec(n).model_copy(update={"gpu_ids": ["0"]}) for n in ("g0", "g1")]
    settings = SupervisorSettings(stagger_gpu_s=1.0, health_interval_s=0.2, stop_timeout_s=1, poll_s=0.05)
    sup = supervisor(specs, settings)
    _drive(sup, lambda: all(p.started_at for p in sup.state.processes))
    g0, g1 = sup.state.process("g0"), sup.state.process("g1")
    assert g1.started_at - g0.started_at >= 0.9
