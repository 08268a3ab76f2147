"""Measure `gpumix up --ray` on a local two-host cluster: time to healthy, the failover gap clients see when a
host dies, and the time to re-plan and re-serve its services.

    python bench/cluster/up_bench.py [--rounds 3] [--json-out FILE]

Each round (real Ray 2.60, real llama-server, examples/cpu-fleet.yaml: chat on a and b, embed on b):
1. `gpumix cluster local --hosts a,b`;
2. `gpumix up examples/cpu-fleet.yaml --ray auto --detach`, timed from the command's start to its exit (every
   engine healthy, the backends file written, the gateway healthy);
3. steady chat load through the gateway (2 clients, each sending its next request when the last one answers,
   max_tokens 4) for 8 s, then SIGKILL to every Ray process of host b, load on for 20 s after embed is back;
   recorded: every request's latency and status, split into before / after the kill;
4. from the kill: when Ray's node table said b was dead (the controller's `host-dead` event), the re-plan's own
   time (the planner run, from the `moved` event), and when the gateway first answered an embeddings request
   from the stand-in on host a (backends file lists it and a request returns 200);
5. `gpumix down`, `gpumix cluster down`, and a count of engine and Ray processes left.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp
import httpx
import psutil

ROOT = Path(__file__).resolve().parents[2]
GPUMIX = [sys.executable, "-m", "gpumix"]
FLEET = ROOT / "examples" / "cpu-fleet.yaml"
CHAT = {"model": "chat", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4, "temperature": 0}


def run(argv: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*GPUMIX, *argv], env=env, capture_output=True, text=True, timeout=timeout)


def free_block(n: int) -> int:
    from gpumix.netutil import free_port, port_is_free

    for _ in range(50):
        first = free_port()
        if all(port_is_free(p, ip) for ip in ("127.0.0.1", "127.0.0.2", "127.0.0.3") for p in range(first, first + n)):
            return first
    raise RuntimeError("no free port block")


class Load:
    def __init__(self, front: int, clients: int = 2) -> None:
        self.url = f"http://127.0.0.1:{front}/v1/chat/completions"
        self.clients = clients
        self.results: list[tuple[float, float, object]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=150)) as session:
            await asyncio.gather(*(self._client(session) for _ in range(self.clients)))

    async def _client(self, session: aiohttp.ClientSession) -> None:
        while not self.stop.is_set():
            start = time.monotonic()
            try:
                async with session.post(self.url, json=CHAT) as reply:
                    await reply.read()
                    self.results.append((start, time.monotonic() - start, reply.status))
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.results.append((start, time.monotonic() - start, type(exc).__name__))


def event_time(events: list[dict], kind: str, contains: str = "") -> float | None:
    for event in events:
        if event["kind"] == kind and contains in event["message"]:
            return float(event["at"])
    return None


def one_round(tmp: Path) -> dict:
    from gpumix.cluster.nodes import ray_temp_root

    env = dict(os.environ) | {"GPUMIX_CONFIG_DIR": str(tmp / "config")}
    cluster_dir, run_dir = tmp / "cluster", tmp / "run"
    out = run(["cluster", "local", "--hosts", "a,b", "--json", "--cluster-dir", str(cluster_dir)], env)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    result: dict = {}
    front, base = free_block(1), free_block(12)
    try:
        started = time.monotonic()
        out = run(["up", str(FLEET), "--ray", "auto", "--detach", "--cluster-dir", str(cluster_dir), "--run-dir",
                   str(run_dir), "--port", str(front), "--base-port", str(base), "--agent-dir", str(tmp / "agents")], env)  # fmt: skip
        result["up_to_healthy_s"] = time.monotonic() - started
        assert out.returncode == 0, out.stderr + out.stdout
        load = Load(front)
        load.thread.start()
        time.sleep(8)
        kill_mono, kill_wall = time.monotonic(), time.time()
        for pid in next(h for h in info["hosts"] if h["name"] == "b")["pids"]:
            os.kill(pid, signal.SIGKILL)
        embed_back = None
        while embed_back is None and time.monotonic() - kill_mono < 180:
            ray_run = json.loads((run_dir / "ray.json").read_text())
            moved = [p for p in ray_run["parts"] if p["service"] == "embed" and p["origin"] == "moved"]
            table = json.loads((run_dir / "backends.json").read_text())["services"]
            if moved and table["embed"] and table["embed"][0].startswith("http://127.0.0.2"):
                reply = httpx.post(f"http://127.0.0.1:{front}/v1/embeddings", json={"model": "embed", "input": "x"}, timeout=30)
                if reply.status_code == 200:
                    embed_back = time.monotonic() - kill_mono
            time.sleep(0.2)
        time.sleep(20)
        load.stop.set()
        load.thread.join(timeout=180)
        events = json.loads((run_dir / "ray.json").read_text())["events"]
        dead_at = event_time(events, "host-dead")
        moved_msg = next((e["message"] for e in events if e["kind"] == "moved" and "re-planned" in e["message"]), "")
        replan = re.search(r"in ([0-9.]+) s", moved_msg)
        before = [r for r in load.results if r[0] < kill_mono]
        after = [r for r in load.results if kill_mono <= r[0] < kill_mono + 30]
        result |= {
            "dead_seen_s": dead_at - kill_wall if dead_at else None,
            "replan_s": float(replan.group(1)) if replan else None,
            "embed_reserved_s": embed_back,
            "requests": len(load.results),
            "errors": sum(1 for r in load.results if r[2] != 200),
            "before_p50_s": statistics.median(r[1] for r in before),
            "before_max_s": max(r[1] for r in before),
            "after_kill_p50_s": statistics.median(r[1] for r in after),
            "after_kill_max_s": max(r[1] for r in after),
        }
    finally:
        out = run(["down", "--run-dir", str(run_dir)], env)
        run(["cluster", "down", "--cluster-dir", str(cluster_dir)], env)
    time.sleep(2)
    marks = [str(tmp), str(ray_temp_root(cluster_dir))] + [f"--port {port} " for port in range(base, base + 12)]
    result["processes_left"] = sum(
        1 for p in psutil.process_iter(["cmdline"]) if any(m in " ".join(p.info["cmdline"] or []) + " " for m in marks)
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    rounds = []
    for i in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="gpumix-upbench-") as tmp:
            result = one_round(Path(tmp))
        result["load_average"] = os.getloadavg()[0]
        rounds.append(result)
        print(f"round {i + 1}: " + ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()),
              flush=True)  # fmt: skip
    if args.json_out:
        args.json_out.write_text(json.dumps(rounds, indent=2))
    print("\n| measure | median | min | max | rounds |\n|---|---|---|---|---|")
    for key in rounds[0]:
        values = [r[key] for r in rounds if isinstance(r[key], int | float)]
        if values:
            print(f"| {key} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} | {len(values)} |")


if __name__ == "__main__":
    main()
