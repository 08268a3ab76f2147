"""Measure a local Ray cluster of gpumix: start time, RAM per node, agent creation to a healthy engine,
dead-host detection, and `cluster down`.

    python bench/cluster/cluster_bench.py [--rounds 3] [--llama] [--json-out FILE]

Each round: `gpumix cluster local --hosts a,b --json` (timed from the command's start to its exit, when every
node is registered); memory of each node's processes (RSS and PSS, which counts shared pages once);
a host agent with a stand-in engine (tests/run/fake_engine.py) on host a, timed from actor creation to the
engine's first healthy answer; with --llama, the same for the CPU demo's chat llama-server (SmolLM2 135M since
issue 13; RESULTS.md was measured with Gemma 3 270M) on host b plus its first chat reply; then SIGKILL to host
b's Ray processes, timed until Ray reports the node dead; then `gpumix cluster down`, timed, and a check that no
process of the cluster is left.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "run"))

from runhelpers import FAKE_ENGINE, fake_plan  # noqa: E402

from gpumix.cluster import procs  # noqa: E402
from gpumix.cluster.agent import AgentSpec, DeviceClaim, start_agent, stop_agent, wait_healthy  # noqa: E402
from gpumix.cluster.client import connect_state  # noqa: E402
from gpumix.cluster.names import HOST_LABEL  # noqa: E402
from gpumix.cluster.nodes import read_cluster  # noqa: E402
from gpumix.launch.spec import LaunchSpec  # noqa: E402
from gpumix.netutil import free_port  # noqa: E402
from gpumix.run.supervisor import SupervisorSettings  # noqa: E402

GPUMIX = [sys.executable, "-m", "gpumix"]
SETTINGS = SupervisorSettings(stagger_gpu_s=0, stagger_cpu_s=0, health_interval_s=0.5, poll_s=0.05, stop_timeout_s=5)


def memory_of(pids: list[int]) -> tuple[int, int]:
    rss = pss = 0
    for pid in pids:
        try:
            info = psutil.Process(pid).memory_full_info()
        except psutil.Error:
            continue
        rss += info.rss
        pss += info.pss
    return rss, pss


def node_memory(state) -> dict[str, dict[str, float]]:  # noqa: ANN001 - ClusterState
    out = {}
    for node in state.nodes:
        members = [p.pid for p in procs.session_processes(node.session, node.started_at)]
        rss, pss = memory_of(members)
        out[node.name] = {"processes": len(members), "rss_mib": rss / 2**20, "pss_mib": pss / 2**20}
    return out


def fake_agent(run_root: Path) -> AgentSpec:
    port = free_port("127.0.0.2")
    spec = LaunchSpec(service="fake", engine="llama.cpp", argv=[sys.executable, str(FAKE_ENGINE), str(port), "--host", "127.0.0.1"],
                      env={"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": ""}, port=port, health_path="/health")  # fmt: skip
    return AgentSpec(name="bench.fake", host="a", devices=(DeviceClaim("a/cpu0", 0.5),), specs=(spec,),
                     plan=fake_plan(["fake"]), settings=SETTINGS, run_root=str(run_root))  # fmt: skip


def llama_agent(run_root: Path) -> AgentSpec:
    from gpumix.launch.commands import render_plan
    from gpumix.plan.planner import plan_file

    plan = plan_file(ROOT / "examples" / "cpu-demo.yaml")
    chat = next(s for s in render_plan(plan, allocate_port=lambda: free_port("127.0.0.3")) if s.service == "chat")
    return AgentSpec(name="bench.chat", host="b", devices=(DeviceClaim("b/cpu0"),), specs=(chat,), plan=plan,
                     settings=SETTINGS, run_root=str(run_root))  # fmt: skip


def time_agent(spec: AgentSpec) -> tuple[float, dict]:
    t0 = time.monotonic()
    handle = start_agent(spec)
    [report] = wait_healthy([handle], 600, poll_s=0.05)
    return time.monotonic() - t0, {"handle": handle, "report": report}


def one_round(llama: bool) -> dict:
    root = Path(tempfile.mkdtemp(prefix="gpumix-cluster-bench-"))
    env = dict(os.environ) | {"GPUMIX_CONFIG_DIR": str(root / "config")}
    cluster_dir = root / "cluster"
    result: dict = {}
    t0 = time.monotonic()
    out = subprocess.run([*GPUMIX, "cluster", "local", "--hosts", "a,b", "--json", "--cluster-dir", str(cluster_dir)],
                         env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    result["local_ready_s"] = time.monotonic() - t0
    try:
        if out.returncode != 0:
            raise SystemExit(f"cluster local failed: {out.stderr}")
        info = json.loads(out.stdout)
        state = read_cluster(cluster_dir)
        result["memory_idle"] = node_memory(state)
        with connect_state(state) as ray:
            result["agent_fake_healthy_s"], fake = time_agent(fake_agent(root / "agents"))
            worker = [fake["report"]["pid"], fake["report"]["supervisor_pid"]]
            result["agent_fake_worker_plus_supervisor_pss_mib"] = memory_of(worker)[1] / 2**20
            if llama:
                result["agent_llama_healthy_s"], chat = time_agent(llama_agent(root / "agents"))
                url = chat["report"]["urls"]["chat"]
                t1 = time.monotonic()
                reply = httpx.post(f"{url}/v1/chat/completions", timeout=120,
                                   json={"messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 8})  # fmt: skip
                reply.raise_for_status()
                result["llama_first_reply_s"] = time.monotonic() - t1
                stop_agent(chat["handle"])
            stop_agent(fake["handle"])
            for pid in next(h for h in info["hosts"] if h["name"] == "b")["pids"]:
                os.kill(pid, signal.SIGKILL)
            t2 = time.monotonic()
            while any(n["Alive"] and (n.get("Labels") or {}).get(HOST_LABEL) == "b" for n in ray.nodes()):
                time.sleep(0.1)
            result["dead_host_detected_s"] = time.monotonic() - t2
    finally:
        sessions = [(n.session, n.started_at) for n in state.nodes] if out.returncode == 0 else []
        t3 = time.monotonic()
        subprocess.run([*GPUMIX, "cluster", "down", "--cluster-dir", str(cluster_dir)], env=env, capture_output=True, timeout=300)
        result["down_s"] = time.monotonic() - t3
        result["left_after_down"] = sum(len(procs.session_processes(s, t)) for s, t in sessions)
    return result


def summary(rounds: list[dict]) -> str:
    keys = ["local_ready_s", "agent_fake_healthy_s", "agent_llama_healthy_s", "llama_first_reply_s",
            "dead_host_detected_s", "down_s", "agent_fake_worker_plus_supervisor_pss_mib", "left_after_down"]  # fmt: skip
    lines = ["| measure | median | min | max | rounds |", "|---|---|---|---|---|"]
    for key in keys:
        values = [r[key] for r in rounds if key in r]
        if values:
            lines.append(f"| {key} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} | {len(values)} |")
    lines += ["", "| node | processes | RSS MiB (median) | PSS MiB (median) |", "|---|---|---|---|"]
    for node in rounds[0]["memory_idle"]:
        mem = [r["memory_idle"][node] for r in rounds]
        lines.append(f"| {node} | {mem[0]['processes']} | {statistics.median(m['rss_mib'] for m in mem):.0f} | "
                     f"{statistics.median(m['pss_mib'] for m in mem):.0f} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--llama", action="store_true", help="also time a real llama-server agent (needs `make llama`)")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    rounds = []
    for i in range(args.rounds):
        rounds.append(one_round(args.llama))
        print(f"round {i + 1}: " + json.dumps({k: v for k, v in rounds[-1].items() if k != "memory_idle"}), flush=True)
    load = os.getloadavg()
    print(f"\nload average at the end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; cores: {os.cpu_count()}\n")
    print(summary(rounds))
    if args.json_out:
        args.json_out.write_text(json.dumps(rounds, indent=2))


if __name__ == "__main__":
    main()
