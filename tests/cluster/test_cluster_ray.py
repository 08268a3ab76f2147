"""Real Ray: `gpumix cluster local --hosts a,b`, host agents placed by label and device resource, no orphan
engines, split groups reserved and restarted together, an unauthenticated join refused, a dead host seen,
`gpumix cluster down` leaving no process. One cluster for the module; tests run in file order (the last ones
kill host b and then the whole cluster)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from clusterhelpers import FAST, LocalCluster, agent_spec, engine_pids, pid_alive, wait_gone

from gpumix.cluster import procs
from gpumix.cluster.agent import (
    AgentSpec,
    DeviceClaim,
    actor_options,
    agent_class,
    check_group,
    describe,
    get_agent,
    remove_group,
    reserve_group,
    start_agent,
    start_group,
    stop_agent,
    wait_healthy,
)
from gpumix.cluster.client import connect_state
from gpumix.cluster.names import HOST_LABEL
from gpumix.cluster.status import cluster_report
from gpumix.errors import GpumixError

pytestmark = pytest.mark.ray
GPUMIX = [sys.executable, "-m", "gpumix"]
HEALTHY_S = 90.0  # an agent from creation to a healthy engine; ~5 s on a quiet machine


@pytest.fixture(scope="module")
def ray(local_cluster: LocalCluster) -> Iterator[Any]:
    with connect_state(local_cluster.state) as connected:
        yield connected


@pytest.fixture
def run_root(tmp_path: Path) -> Path:
    return tmp_path / "agents"


def _ip(cluster: LocalCluster, host: str) -> str:
    return cluster.host(host)["node_ip"]


def test_local_cluster_json_names_each_host_and_its_ray_processes(local_cluster, ray):
    info = local_cluster.info
    assert info["address"].startswith("127.0.0.254:")
    assert [(h["name"], h["node_ip"]) for h in info["hosts"]] == [("a", "127.0.0.2"), ("b", "127.0.0.3")]
    for host in info["hosts"]:
        assert host["pids"] and all(pid_alive(p) for p in host["pids"])
        cmdlines = " ".join(" ".join(_cmdline(p)) for p in host["pids"])
        assert "raylet" in cmdlines and host["node_ip"] in cmdlines
    report = cluster_report(ray, info["address"])
    alive = {h.name: h for h in report.hosts if h.alive}
    assert set(alive) == {"head", "a", "b"}
    assert alive["a"].devices == ["a/cpu0"] and alive["b"].devices == ["b/cpu0"]
    assert alive["a"].node_ip == "127.0.0.2" and alive["head"].is_head


def test_cluster_status_cli_reports_hosts(local_cluster):
    out = _gpumix(local_cluster, "cluster", "status", "--json")
    assert out.returncode == 0, out.stderr
    hosts = {h["name"]: h for h in json.loads(out.stdout)["hosts"] if h["alive"]}
    assert hosts["b"]["devices"] == ["b/cpu0"] and hosts["b"]["node_ip"] == "127.0.0.3"


def test_token_file_is_private(local_cluster):
    token = Path(local_cluster.state.token_file)
    assert token.parent == local_cluster.config_dir
    assert oct(token.stat().st_mode & 0o777) == "0o600" and len(token.read_text()) == 64


def test_unauthenticated_join_is_refused(local_cluster, tmp_path):
    """A node without the cluster token cannot join; nothing of it is left running."""
    before = set(_pids_with("127.0.0.9"))
    out = _gpumix(local_cluster, "cluster", "join", local_cluster.info["address"], "--host", "intruder", "--insecure",
                  "--node-ip", "127.0.0.9", "--cluster-dir", str(tmp_path / "intruder"), timeout=300)  # fmt: skip
    assert out.returncode == 2
    assert "refused this node" in out.stderr and "token" in out.stderr
    assert "Traceback" not in out.stderr
    assert set(_pids_with("127.0.0.9")) <= before


def test_a_client_with_a_wrong_token_is_refused(local_cluster, tmp_path):
    bad = tmp_path / "bad-token"
    bad.write_text("0" * 64)
    bad.chmod(0o600)
    out = _gpumix(local_cluster, "cluster", "status", "--address", local_cluster.info["address"], "--token-file", str(bad),
                  "--cluster-dir", str(tmp_path / "none"), timeout=300)  # fmt: skip
    assert out.returncode == 2 and "refused the token" in out.stderr, out.stderr


def test_a_host_joins_with_the_token_and_leaves_with_down(local_cluster, ray, tmp_path):
    """The real `join` path: host c on 127.0.0.4 with the cluster's token file, then its own `cluster down`."""
    join_dir = tmp_path / "c"
    out = _gpumix(local_cluster, "cluster", "join", local_cluster.info["address"], "--host", "c", "--node-ip", "127.0.0.4",
                  "--cpu-only", "--cluster-dir", str(join_dir), timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    try:
        c = cluster_report(ray, local_cluster.info["address"]).host("c")
        assert c.node_ip == "127.0.0.4" and c.devices == ["c/cpu0"] and not c.is_head
    finally:
        down = _gpumix(local_cluster, "cluster", "down", "--cluster-dir", str(join_dir), timeout=120)
    assert down.returncode == 0, down.stderr
    deadline = time.monotonic() + 60
    while any(h.name == "c" and h.alive for h in cluster_report(ray, local_cluster.info["address"]).hosts):
        assert time.monotonic() < deadline, "host c still alive after its `cluster down`"
        time.sleep(1)


def test_agent_runs_on_its_host_and_binds_the_node_address(local_cluster, ray, run_root):
    handle = start_agent(agent_spec("t.where-b", "b", _ip(local_cluster, "b"), run_root))
    try:
        [report] = wait_healthy([handle], HEALTHY_S)
        assert report["host"] == "b" and report["node_ip"] == "127.0.0.3"
        assert report["node_id"] == _node_id(ray, "b")
        url = report["urls"]["t-where-b"]
        assert url.startswith("http://127.0.0.3:")
        assert httpx.get(url + "/health", timeout=5).status_code == 200
        with pytest.raises(httpx.ConnectError):  # bound to the node address only, not 127.0.0.1
            httpx.get(url.replace("127.0.0.3", "127.0.0.1") + "/health", timeout=5)
        listening = {c.laddr.ip for c in _connections(engine_pids(report)[0])}
        assert listening == {"127.0.0.3"}
    finally:
        stop_agent(handle)


def test_an_engine_that_crashes_before_healthy_fails_the_wait(local_cluster, ray, run_root):
    spec = agent_spec("t.crash", "a", _ip(local_cluster, "a"), run_root)
    crashing = spec.specs[0].model_copy(update={"argv": [sys.executable, "-c", "import sys; sys.exit(3)"]})
    handle = start_agent(dataclasses.replace(spec, specs=(crashing,)))
    try:
        with pytest.raises(GpumixError, match="did not become healthy: exited with code 3"):
            wait_healthy([handle], HEALTHY_S, names=["t.crash"])
    finally:
        stop_agent(handle)


def test_agent_cannot_land_on_another_host(local_cluster, ray, run_root):
    """Asking for host a's label with host b's device: no node has both, so it is never placed."""
    spec = agent_spec("t.nowhere", "b", _ip(local_cluster, "b"), run_root)
    options = actor_options(spec) | {"label_selector": {HOST_LABEL: "a"}}
    handle = agent_class().options(**options).remote(spec)
    try:
        assert describe(handle, timeout_s=8) is None  # still pending
    finally:
        stop_agent(handle)


def test_agent_refuses_a_node_with_another_host_label(local_cluster, ray, run_root):
    """The agent checks the node label itself: forced onto host b (b's device, no label selector) while its
    spec says host a, it refuses to start any engine."""
    spec = agent_spec("t.wrong", "a", _ip(local_cluster, "a"), run_root)
    options = actor_options(spec) | {"resources": {"gpumix.io/dev/b/cpu0": 1.0}}
    options.pop("label_selector")
    handle = agent_class().options(**options).remote(spec)
    try:
        with pytest.raises(ray.exceptions.RayActorError, match="refusing to start"):
            describe(handle, timeout_s=60)
        assert not (run_root / "t.wrong").exists()
    finally:
        stop_agent(handle)


def test_a_device_is_claimed_once(local_cluster, ray, run_root):
    ip = _ip(local_cluster, "a")
    first = start_agent(agent_spec("t.claim-1", "a", ip, run_root))
    second = None
    try:
        wait_healthy([first], HEALTHY_S)
        second = start_agent(agent_spec("t.claim-2", "a", ip, run_root))
        with pytest.raises(GpumixError, match="not placed"):
            wait_healthy([second], 6, names=["t.claim-2"])
        stop_agent(first)
        [report] = wait_healthy([second], HEALTHY_S)  # the card is free again: the waiting agent runs
        assert report["node_ip"] == ip
    finally:
        stop_agent(first)
        if second is not None:
            stop_agent(second)


def test_killing_the_agent_worker_takes_its_engines_and_ray_restarts_it(local_cluster, ray, run_root, tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    handle = start_agent(agent_spec("t.orphans", "a", _ip(local_cluster, "a"), run_root, "--grandchild", str(pidfile)))
    try:
        [report] = wait_healthy([handle], HEALTHY_S)
        doomed = [*engine_pids(report), report["supervisor_pid"], int(pidfile.read_text())]
        assert all(pid_alive(p) for p in doomed)
        os.kill(report["pid"], signal.SIGKILL)  # the actor's Ray worker process
        assert wait_gone(doomed, 30) == []  # engine, its helper and the supervisor: no orphans
        [again] = wait_healthy([handle], HEALTHY_S)  # max_restarts=-1: Ray starts the agent again on host a
        assert again["pid"] != report["pid"] and again["node_ip"] == "127.0.0.2"
        assert engine_pids(again) and engine_pids(again) != engine_pids(report)
    finally:
        stop_agent(handle)


def test_split_parts_are_reserved_and_restarted_together(local_cluster, ray, run_root):
    parts = [agent_spec("t.split-a", "a", _ip(local_cluster, "a"), run_root, share=0.5),
             agent_spec("t.split-b", "b", _ip(local_cluster, "b"), run_root, share=0.5)]  # fmt: skip
    group = start_group(reserve_group("t.split", parts, timeout_s=60))
    try:
        reports = wait_healthy(group.handles, HEALTHY_S)
        assert [r["node_ip"] for r in reports] == ["127.0.0.2", "127.0.0.3"]
        before = [engine_pids(r) for r in reports]
        os.kill(reports[1]["pid"], signal.SIGKILL)  # part b's worker dies; part a is fine
        deadline = time.monotonic() + 60
        while not check_group(group):
            assert time.monotonic() < deadline, "the group controller did not see part b die"
            time.sleep(0.5)
        after = wait_healthy(group.handles, HEALTHY_S)
        assert group.restarts == 1
        assert wait_gone(before[0] + before[1], 30) == []  # both parts' old engines are gone: restarted together
        assert all(engine_pids(r) for r in after)
    finally:
        remove_group(group)


def test_a_group_is_reserved_all_or_nothing(local_cluster, ray, run_root):
    parts = [agent_spec("t.half-a", "a", _ip(local_cluster, "a"), run_root),
             agent_spec("t.half-c", "c", "127.0.0.2", run_root)]  # fmt: skip  (host c is not in the cluster)
    with pytest.raises(GpumixError, match="nothing was started"):
        reserve_group("t.half", parts, timeout_s=5)
    assert get_agent("t.half-a") is None
    handle = start_agent(agent_spec("t.after-half", "a", _ip(local_cluster, "a"), run_root))
    try:
        wait_healthy([handle], HEALTHY_S)  # a/cpu0 was not left reserved by the failed group
    finally:
        stop_agent(handle)


@pytest.mark.llama
@pytest.mark.slow
def test_a_real_llama_server_serves_from_its_host(local_cluster, ray, run_root):
    """The CPU demo's chat service (llama-server, SmolLM2 135M Instruct) as a host agent on host b: it binds b's
    address, answers a chat request there, and is gone after the agent stops."""
    from gpumix.launch.commands import render_plan
    from gpumix.launch.llamacpp import find_llama_cpp
    from gpumix.netutil import free_port
    from gpumix.plan.planner import plan_file

    if find_llama_cpp() is None:
        pytest.skip("llama.cpp is not built (make llama)")
    plan = plan_file(Path(__file__).parents[2] / "examples" / "cpu-demo.yaml")
    chat = next(s for s in render_plan(plan, allocate_port=lambda: free_port("127.0.0.3")) if s.service == "chat")
    spec = AgentSpec(name="t.llama-chat", host="b", devices=(DeviceClaim("b/cpu0"),), specs=(chat,), plan=plan,
                     settings=FAST, run_root=str(run_root))  # fmt: skip
    handle = start_agent(spec)
    try:
        [report] = wait_healthy([handle], 300)
        url = report["urls"]["chat"]
        assert url.startswith("http://127.0.0.3:")
        body = {"messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 8, "temperature": 0}
        reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
        assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"]
        engine = engine_pids(report)
        assert "llama-server" in " ".join(_cmdline(engine[0]))
    finally:
        stop_agent(handle)
    assert wait_gone(engine, 30) == []


def test_a_killed_host_is_seen_dead_and_its_engines_stop(local_cluster, ray, run_root):
    handle = start_agent(agent_spec("t.on-b", "b", _ip(local_cluster, "b"), run_root, max_restarts=0))
    [report] = wait_healthy([handle], HEALTHY_S)
    engines = engine_pids(report)
    for pid in local_cluster.host("b")["pids"]:  # every Ray process host b started with
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:
        hosts = cluster_report(ray, local_cluster.info["address"], agent_timeout_s=2).hosts
        if any(h.name == "b" and not h.alive for h in hosts) and not any(h.name == "b" and h.alive for h in hosts):
            break
        assert time.monotonic() < deadline, "host b not reported dead"
        time.sleep(1)
    assert wait_gone(engines + [report["pid"]], 30) == []  # its worker and engines went with it
    with pytest.raises(ray.exceptions.RayActorError):
        describe(handle, timeout_s=30)


def test_cluster_down_leaves_no_process(local_cluster, ray):
    sessions = [(n.session, n.started_at) for n in local_cluster.state.nodes]
    members = [p.pid for s, t in sessions for p in procs.with_descendants(procs.session_processes(s, t))]
    assert members  # the head and host a are still up
    out = _gpumix(local_cluster, "cluster", "down", timeout=120)
    assert out.returncode == 0, out.stderr
    assert wait_gone(members, 10) == []
    assert all(not procs.session_processes(s, t) for s, t in sessions)
    assert not (local_cluster.cluster_dir / "cluster.json").exists()
    assert not any(Path(n.temp_dir).exists() for n in local_cluster.state.nodes)  # Ray's temp dirs are gone


# ---- helpers ---------------------------------------------------------------------------------------------
def _gpumix(cluster: LocalCluster, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    argv = [*GPUMIX, *args]
    if "--cluster-dir" not in args:
        argv += ["--cluster-dir", str(cluster.cluster_dir)]
    return subprocess.run(argv, env=cluster.env, capture_output=True, text=True, timeout=timeout)


def _cmdline(pid: int) -> list[str]:
    import psutil

    try:
        return psutil.Process(pid).cmdline()
    except psutil.Error:
        return []


def _pids_with(text: str) -> list[int]:
    import psutil

    return [p.pid for p in psutil.process_iter(["cmdline"]) if text in " ".join(p.info["cmdline"] or [])]


def _connections(pid: int) -> list[Any]:
    import psutil

    return [c for c in psutil.Process(pid).net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN]


def _node_id(ray: Any, host: str) -> str:
    return next(n["NodeID"] for n in ray.nodes() if n["Alive"] and (n.get("Labels") or {}).get(HOST_LABEL) == host)
