"""`gpumix up PLAN --ray auto` for real: a local Ray cluster (hosts a and b on 127.0.0.2 / 127.0.0.3), real
llama-server and ggml-rpc-server engines (Gemma 3 270M), the gateway on this machine.

1. An allow_rpc-style split of the CPU fleet over both hosts (llama-server on a, ggml-rpc-server on b): both parts
   are reserved together, bind their node addresses, answer through the gateway, and restart together when one
   dies.
2. examples/cpu-fleet.yaml: chat (one replica per host) and embed (host b); every engine listens on its own host's
   address only; SIGKILL to every Ray process of host b under steady chat load: no chat request fails, embed
   answers again from host a within 90 s; host b rejoins and embed returns there; `gpumix down` leaves no engine.
3. `gpumix cluster down` leaves no Ray process.

Tests run in file order on one cluster (the second kills host b)."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import psutil
import pytest
from clusterhelpers import LocalCluster, kill_sessions, wait_gone

from gpumix.cluster import procs
from gpumix.cluster.deploy import read_ray_run
from gpumix.cluster.nodes import ray_temp_root, read_cluster
from gpumix.launch.llamacpp import find_llama_cpp
from gpumix.netutil import free_port
from gpumix.plan.planner import plan_file

pytestmark = [pytest.mark.ray, pytest.mark.llama, pytest.mark.slow]
GPUMIX = [sys.executable, "-m", "gpumix"]
FLEET = Path(__file__).parents[2] / "examples" / "cpu-fleet.yaml"
HOSTS = {"a": "127.0.0.2", "b": "127.0.0.3"}
CHAT = {"model": "chat", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4, "temperature": 0}
UP_TIMEOUT_S = 600  # three llama-servers and two Ray nodes on a shared 2-core machine


@pytest.fixture(scope="module", autouse=True)
def llama_built() -> None:
    if find_llama_cpp() is None:
        pytest.skip("llama.cpp is not built (make llama)")


def port_block(n: int) -> int:
    """A first port such that it and the next n-1 are free on both hosts' addresses and on 127.0.0.1."""
    for _ in range(50):
        first = free_port()
        if first + n < 65000 and all(_free(ip, p) for ip in [*HOSTS.values(), "127.0.0.1"] for p in range(first, first + n)):
            return first
    raise RuntimeError("no free port block")


def _free(ip: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((ip, port))
        except OSError:
            return False
    return True


def gpumix(cluster: LocalCluster, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*GPUMIX, *args], env=cluster.env, capture_output=True, text=True, timeout=timeout)


def up(cluster: LocalCluster, plan: Path, run_dir: Path, front: int, base: int) -> subprocess.CompletedProcess:
    return gpumix(cluster, "up", str(plan), "--ray", "auto", "--detach", "--cluster-dir", str(cluster.cluster_dir),
                  "--run-dir", str(run_dir), "--port", str(front), "--base-port", str(base),
                  "--agent-dir", str(run_dir.parent / "agents"), "--health-timeout-s", "300", timeout=UP_TIMEOUT_S)  # fmt: skip


def status(cluster: LocalCluster, run_dir: Path) -> dict[str, Any]:
    out = gpumix(cluster, "status", "--json", "--run-dir", str(run_dir), timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def parts_by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in report["parts"]}


def engine_pids(report: dict[str, Any]) -> list[int]:
    return [proc["pid"] for p in report["parts"] for proc in p["processes"] if proc["pid"]]


def listening(pid: int) -> set[str]:
    return {c.laddr.ip for c in psutil.Process(pid).net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}


def chat(front: int, model: str = "chat", timeout: float = 120) -> httpx.Response:
    return httpx.post(f"http://127.0.0.1:{front}/v1/chat/completions", json=CHAT | {"model": model}, timeout=timeout)


def embed(front: int) -> httpx.Response:
    return httpx.post(f"http://127.0.0.1:{front}/v1/embeddings", json={"model": "embed", "input": "a red apple"}, timeout=60)


def engines_in(ports: range) -> list[int]:
    """llama-server / ggml-rpc-server processes listening in our port block, whatever their state."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmd = proc.info["cmdline"] or []
        if any(n in (proc.info["name"] or "") for n in ("llama-server", "ggml-rpc-server")) and any(
            str(p) in cmd for p in ports
        ):
            found.append(proc.pid)
    return found


def agent_worker_of(agent_dir: Path, part: str) -> int:
    """The Ray worker process of one host agent: the parent of the supervisor running in its run dir."""
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "gpumix.cluster.agent_main" in cmd and cmd[-1].endswith(f".{part}"):
            return proc.ppid()
    raise AssertionError(f"no supervisor for {part} under {agent_dir}")


# ---- 1. a split across hosts --------------------------------------------------------------------------------
def split_plan(path: Path) -> Path:
    """The CPU fleet's model as one llama.cpp layer split over a/cpu0 (llama-server) and b/cpu0 (ggml-rpc-server):
    9 of Gemma 3 270M's 18 layers on each host. The planner does not split CPUs over hosts on its own (a split
    pays the network per token), so the split is written into the plan as `allow_rpc` would place it on GPUs."""
    plan = plan_file(FLEET)
    chat = plan.service("chat")
    split = chat.model_copy(update={
        "name": "split", "mode": "layer_split", "devices": ["a/cpu0", "b/cpu0"], "layers": [9, 9], "split": [0.5, 0.5],
        "replicas": 1, "n_gpu_layers": 9, "memory_bytes": [200_000_000, 200_000_000], "concurrency": 1,
    })  # fmt: skip
    path.write_text(plan.model_copy(update={"services": [split], "source": None}).model_dump_json())
    return path


def test_a_split_over_two_hosts_starts_serves_and_restarts_together(local_cluster, tmp_path):
    run_dir = tmp_path / "split" / "run"
    front, base = free_port(), port_block(8)
    out = up(local_cluster, split_plan(tmp_path / "split.json"), run_dir, front, base)
    try:
        assert out.returncode == 0, out.stderr + out.stdout
        run = read_ray_run(run_dir)
        assert run is not None
        main, worker = run.part(f"{run.deployment}.split"), run.part(f"{run.deployment}.split-rpc0")
        placed = parts_by_name(status(local_cluster, run_dir))
        assert placed["split"]["node_ip"] == HOSTS["a"] and placed["split-rpc0"]["node_ip"] == HOSTS["b"]
        assert list(placed["split-rpc0"]["resources"]) == ["gpumix.io/dev/b/cpu0"]
        assert (main.host, worker.host) == ("a", "b") and main.group == worker.group is not None
        worker_spec, main_spec = worker.specs[0], main.specs[0]
        assert worker_spec.argv[worker_spec.argv.index("-H") + 1] == HOSTS["b"]  # the cluster address, not 127.0.0.1
        assert main_spec.argv[main_spec.argv.index("--rpc") + 1] == f"{HOSTS['b']}:{worker_spec.port}"
        assert main_spec.argv[main_spec.argv.index("-dev") + 1] == "RPC0"
        reply = chat(front, "split")
        assert reply.status_code == 200, reply.text
        before = status(local_cluster, run_dir)
        assert {p["state"] for p in before["parts"]} == {"serving"}
        old = engine_pids(before)
        assert len(old) == 2
        os.kill(agent_worker_of(run_dir.parent / "agents", "split-rpc0"), signal.SIGKILL)  # the worker part dies
        deadline = time.monotonic() + 240
        while True:
            report = status(local_cluster, run_dir)
            kinds = [e["kind"] for e in report["events"]]
            new = engine_pids(report)
            if "restarted" in kinds and {p["state"] for p in report["parts"]} == {"serving"} and len(new) == 2:
                break
            assert time.monotonic() < deadline, f"the split did not restart: {report}"
            time.sleep(2)
        assert not set(new) & set(old)  # both parts restarted, not only the one that died
        assert wait_gone(old, 30) == []
        assert any("restarted together" in e["message"] for e in report["events"])
        reply = chat(front, "split")
        assert reply.status_code == 200, reply.text
    finally:
        down = gpumix(local_cluster, "down", "--run-dir", str(run_dir))
    assert down.returncode == 0, down.stderr
    assert wait_gone(engines_in(range(base, base + 8)), 30) == []


# ---- 2. the CPU fleet survives a host dying ----------------------------------------------------------------
class ChatLoad:
    """Steady chat load through the gateway from a thread: `workers` requests always in flight."""

    def __init__(self, front: int, workers: int = 2) -> None:
        self.url = f"http://127.0.0.1:{front}/v1/chat/completions"
        self.workers = workers
        self.results: list[tuple[float, float, int | str]] = []  # (start, seconds, status or error)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> ChatLoad:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=180)

    async def _run(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=150)) as session:
            await asyncio.gather(*(self._worker(session) for _ in range(self.workers)))

    async def _worker(self, session: aiohttp.ClientSession) -> None:
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                async with session.post(self.url, json=CHAT) as reply:
                    await reply.read()
                    self.results.append((start, time.monotonic() - start, reply.status))
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.results.append((start, time.monotonic() - start, type(exc).__name__))


def test_the_fleet_keeps_serving_when_host_b_dies_and_returns(local_cluster, tmp_path):
    run_dir = tmp_path / "fleet" / "run"
    front, base = free_port(), port_block(12)
    b_join = tmp_path / "b-again"
    out = up(local_cluster, FLEET, run_dir, front, base)
    try:
        assert out.returncode == 0, out.stderr + out.stdout
        report = status(local_cluster, run_dir)
        parts = parts_by_name(report)
        assert {n: p["host"] for n, p in parts.items()} == {"chat-0": "a", "chat-1": "b", "embed": "b"}
        for part in parts.values():  # each agent on its own host, holding its host's card; its engine listens there only
            assert part["node_ip"] == HOSTS[part["host"]]
            assert list(part["resources"]) == [f"gpumix.io/dev/{part['host']}/cpu0"] and 0 < part["resources"][f"gpumix.io/dev/{part['host']}/cpu0"] < 1
            [proc] = part["processes"]
            assert listening(proc["pid"]) == {HOSTS[part["host"]]}
            assert part["urls"] == [f"http://{HOSTS[part['host']]}:{proc['port']}"]
        assert chat(front).status_code == 200
        assert embed(front).status_code == 200

        kill_at = 0.0
        with ChatLoad(front) as load:
            time.sleep(8)
            kill_at = time.monotonic()
            for pid in local_cluster.host("b")["pids"]:  # every Ray process of host b
                os.kill(pid, signal.SIGKILL)
            moved = None
            while moved is None:
                assert time.monotonic() - kill_at < 90, f"embed not re-served within 90 s: {status(local_cluster, run_dir)}"
                run = read_ray_run(run_dir)
                stand_in = [p for p in run.parts if p.service == "embed" and p.origin == "moved"] if run else []
                table = json.loads((run_dir / "backends.json").read_text())["services"]
                if stand_in and table["embed"] == stand_in[0].urls and embed(front).status_code == 200:
                    moved = stand_in[0]
                else:
                    time.sleep(0.5)
            reserved_s = time.monotonic() - kill_at
            time.sleep(5)  # load goes on after the move
        assert moved.host == "a" and moved.urls[0].startswith(f"http://{HOSTS['a']}:")
        statuses = collections.Counter(r[2] for r in load.results)
        after_kill = [r for r in load.results if r[0] >= kill_at]
        assert statuses and set(statuses) == {200}, f"chat requests failed: {statuses}"
        assert len(after_kill) >= 5  # the load really ran across the host's death
        print(f"embed re-served {reserved_s:.1f} s after the kill; chat: {len(load.results)} requests, "
              f"max {max(r[1] for r in load.results):.2f} s")  # fmt: skip
        events = [e["kind"] for e in status(local_cluster, run_dir)["events"]]
        assert "host-dead" in events and "degraded" in events  # chat had no free device for a second copy

        # host b comes back: embed returns there, its stand-in on a is drained and stopped
        joined = gpumix(local_cluster, "cluster", "join", local_cluster.info["address"], "--host", "b",
                        "--node-ip", HOSTS["b"], "--cpu-only", "--cluster-dir", str(b_join), timeout=300)  # fmt: skip
        assert joined.returncode == 0, joined.stderr
        deadline = time.monotonic() + 300
        while True:
            report = status(local_cluster, run_dir)
            parts = parts_by_name(report)
            if set(parts) == {"chat-0", "chat-1", "embed"} and {p["state"] for p in parts.values()} == {"serving"}:
                break
            assert time.monotonic() < deadline, f"embed did not return to host b: {report}"
            time.sleep(3)
        assert "returned" in [e["kind"] for e in report["events"]]
        assert embed(front).status_code == 200 and chat(front).status_code == 200
        engines = engines_in(range(base, base + 12))
        assert engines
    finally:
        down = gpumix(local_cluster, "down", "--run-dir", str(run_dir))
        if b_join.exists():
            gpumix(local_cluster, "cluster", "down", "--cluster-dir", str(b_join), timeout=120)
            state = read_cluster(b_join)
            if state is not None:
                for node in state.nodes:
                    procs.send(procs.with_descendants(procs.session_processes(node.session, node.started_at)), signal.SIGKILL)
    assert down.returncode == 0, down.stderr
    assert wait_gone(engines_in(range(base, base + 12)), 30) == []  # no engine left
    assert read_ray_run(run_dir).phase == "stopped"


# ---- 3. nothing left ---------------------------------------------------------------------------------------
def test_cluster_down_leaves_no_ray_process(local_cluster):
    sessions = [(n.session, n.started_at) for n in local_cluster.state.nodes]
    out = gpumix(local_cluster, "cluster", "down", "--cluster-dir", str(local_cluster.cluster_dir), timeout=120)
    assert out.returncode == 0, out.stderr
    assert all(not procs.session_processes(s, t) for s, t in sessions)
    temp_root = str(ray_temp_root(local_cluster.cluster_dir))
    leftovers = [p.pid for p in psutil.process_iter(["cmdline"]) if temp_root in " ".join(p.info["cmdline"] or [])]
    assert leftovers == []
    kill_sessions(local_cluster)  # no-op when down worked; the fixture's finalizer does the same
