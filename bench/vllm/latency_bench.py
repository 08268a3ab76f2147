"""Gateway in front of a real vLLM vs vLLM direct: added latency (p50/p99) and streaming time to first byte.

`gpumix up` starts the vLLM service of a plan file (default: the `chat` service of examples/cpu-vllm.yaml —
SmolLM2 135M on vLLM's CPU build) with the gateway in front. Then one client sends requests one at a time (a real
model on 2 CPU cores has no spare capacity for more), alternating direct / gateway / direct / ... so that drift in
the machine's other load falls on both alike. Per pair the added latency is gateway − direct of neighbouring
requests; percentiles are over each target's own latencies and over the paired differences.

- non-streaming: time to the last byte of a chat completion with max_tokens=1 (the shortest real request),
- streaming: time to the first body byte (TTFB) of a streamed chat completion.

    .venv/bin/python bench/vllm/latency_bench.py --pairs 200 --out bench/vllm/results/latency.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from gpumix.netutil import free_port  # noqa: E402
from gpumix.run.up import UpOptions, start_detached, stop  # noqa: E402

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def one(client: httpx.Client, url: str, model: str, stream: bool) -> float:
    body = {"model": model, "messages": QUESTION, "max_tokens": 1 if not stream else 8, "temperature": 0, "stream": stream}
    start = time.perf_counter()
    if not stream:
        reply = client.post(f"{url}/v1/chat/completions", json=body)
        reply.raise_for_status()
        return time.perf_counter() - start
    with client.stream("POST", f"{url}/v1/chat/completions", json=body) as reply:
        reply.raise_for_status()
        chunks = reply.iter_raw()
        next(chunks)
        elapsed = time.perf_counter() - start
        for _ in chunks:
            pass
    return elapsed


def run_pairs(direct: str, gateway: str, model: str, pairs: int, stream: bool) -> dict:
    out: dict[str, list[float]] = {"direct": [], "gateway": [], "added": []}
    with httpx.Client(timeout=120) as client:
        for _ in range(5):  # warm both paths (connections, vLLM's prefix cache)
            one(client, direct, model, stream)
            one(client, gateway, model, stream)
        for i in range(pairs):
            first, second = (direct, gateway) if i % 2 == 0 else (gateway, direct)
            a = one(client, first, model, stream)
            b = one(client, second, model, stream)
            d, g = (a, b) if first == direct else (b, a)
            out["direct"].append(d * 1000)
            out["gateway"].append(g * 1000)
            out["added"].append((g - d) * 1000)
    return {
        "pairs": pairs,
        **{f"{k}_p50_ms": round(percentile(v, 50), 3) for k, v in out.items()},
        **{f"{k}_p99_ms": round(percentile(v, 99), 3) for k, v in out.items()},
        "added_mean_ms": round(statistics.fmean(out["added"]), 3),
        "added_p50_of_percentiles_ms": round(percentile(out["gateway"], 50) - percentile(out["direct"], 50), 3),
        "added_p99_of_percentiles_ms": round(percentile(out["gateway"], 99) - percentile(out["direct"], 99), 3),
        "samples_ms": {k: [round(x, 3) for x in v] for k, v in out.items()},
    }


def machine_load() -> dict:
    top = subprocess.run(["ps", "-eo", "pcpu,comm", "--sort=-pcpu", "--no-headers"], capture_output=True, text=True)
    return {"loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()], "top_cpu": top.stdout.splitlines()[:6]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", type=Path, default=REPO / "examples" / "cpu-vllm.yaml")
    parser.add_argument("--service", default="chat")
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "vllm" / "results" / "latency.json")
    args = parser.parse_args()
    spec = yaml.safe_load(args.plan.read_text())
    spec["services"] = [s for s in spec["services"] if s["name"] == args.service]
    with tempfile.TemporaryDirectory(prefix="gpumix-vllm-bench-") as tmp:
        plan_file = Path(tmp) / "plan.yaml"
        plan_file.write_text(yaml.safe_dump(spec))
        run_dir = Path(tmp) / "run"
        front = free_port()
        started = time.monotonic()
        try:
            state = start_detached(plan_file, UpOptions(run_dir=run_dir, front_port=front, health_timeout_s=900))
            up_s = time.monotonic() - started
            backend = state.process(args.service).url
            gateway = f"http://127.0.0.1:{front}"
            result = {"command": " ".join(sys.argv), "plan": str(args.plan), "service": args.service,
                      "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                      "up_seconds": round(up_s, 1), "load_before": machine_load()}  # fmt: skip
            for mode, stream in (("non_streaming_last_byte", False), ("streaming_ttfb", True)):
                result[mode] = run_pairs(backend, gateway, args.service, args.pairs, stream)
                print(mode, {k: v for k, v in result[mode].items() if k != "samples_ms"}, flush=True)
            result["load_after"] = machine_load()
        finally:
            stop(run_dir)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
