"""Helpers for the cluster tests (a module with a unique name, so tests can import it)."""

from __future__ import annotations

import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from runhelpers import FAKE_ENGINE, fake_plan

from gpumix.cluster import procs
from gpumix.cluster.agent import AgentSpec, DeviceClaim
from gpumix.cluster.nodes import ClusterState, read_cluster
from gpumix.launch.spec import LaunchSpec
from gpumix.netutil import free_port
from gpumix.run.supervisor import SupervisorSettings

FAST = SupervisorSettings(stagger_gpu_s=0, stagger_cpu_s=0, health_interval_s=0.5, stop_timeout_s=3,
                          backoff_initial_s=0.5, poll_s=0.1)  # fmt: skip


@dataclass
class LocalCluster:
    info: dict[str, Any]  # what `gpumix cluster local --json` printed
    cluster_dir: Path
    config_dir: Path
    env: dict[str, str]
    state: ClusterState = field(init=False)

    def __post_init__(self) -> None:
        state = read_cluster(self.cluster_dir)
        assert state is not None, f"no cluster.json in {self.cluster_dir}"
        self.state = state

    def host(self, name: str) -> dict[str, Any]:
        return next(h for h in self.info["hosts"] if h["name"] == name)


def kill_sessions(cluster: LocalCluster) -> None:
    """Last resort of a fixture: SIGKILL whatever of the cluster's node sessions (and their children) is alive."""
    for node in cluster.state.nodes:
        members = procs.with_descendants(procs.session_processes(node.session, node.started_at))
        procs.send(members, signal.SIGKILL)


def fake_engine_spec(service: str, node_ip: str, *flags: str, replica: int = 0, replicas: int = 1) -> LaunchSpec:
    """A fake engine rendered as gpumix renders engines: listening on 127.0.0.1 until the agent rebinds it."""
    port = free_port(node_ip)
    argv = [sys.executable, str(FAKE_ENGINE), str(port), "--host", "127.0.0.1", *flags]
    return LaunchSpec(service=service, replica=replica, replicas=replicas, engine="llama.cpp", argv=argv,
                      env={"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": ""}, port=port,
                      health_path="/health")  # fmt: skip


def agent_spec(name: str, host: str, node_ip: str, run_root: Path, *flags: str, device: str | None = None,
               share: float = 1.0, max_restarts: int = -1) -> AgentSpec:  # fmt: skip
    service = name.replace(".", "-")
    return AgentSpec(name=name, host=host, devices=(DeviceClaim(device or f"{host}/cpu0", share),),
                     specs=(fake_engine_spec(service, node_ip, *flags),), plan=fake_plan([service]), settings=FAST,
                     run_root=str(run_root), max_restarts=max_restarts)  # fmt: skip


def pid_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(pids: list[int], timeout_s: float) -> list[int]:
    """Those of `pids` still alive after timeout_s (empty when all are gone)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not any(pid_alive(p) for p in pids):
            return []
        time.sleep(0.2)
    return [p for p in pids if pid_alive(p)]


def engine_pids(report: dict[str, Any]) -> list[int]:
    return [p["pid"] for p in report["processes"] if p["pid"] is not None]
