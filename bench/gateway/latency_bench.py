"""Added latency of the gpumix gateway vs Caddy vs the LiteLLM proxy, in the same run, against one fast backend.

For each fixed request rate an open-loop client (its own process, uvloop + aiohttp) sends requests on a schedule
for DURATION seconds to each target in turn: the backend directly, gpumix, Caddy, LiteLLM. Non-streaming: time to
the last byte; streaming: time to the first body byte (TTFB). Added latency = target percentile − direct percentile.

    .venv/bin/python bench/gateway/latency_bench.py --rates 100 500 1000 --duration 10 \
        --out bench/gateway/results/latency.json

LiteLLM runs from its own venv (~/.cache/gpumix/bench-venvs/litellm, see RESULTS.md for how it was installed);
a target that is not installed is skipped and recorded as such.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from common import PY, Processes, free_port, percentile, wait_http

LITELLM_BIN = Path.home() / ".cache/gpumix/bench-venvs/litellm/bin/litellm"
# One key for both gateways that check keys (LiteLLM refuses to start without one); the others ignore the header.
BENCH_KEY = "sk-" + "5e" * 32
CHAT_BODY = {"model": "chat", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}


async def _one(session, url: str, body: bytes, stream: bool) -> float:
    start = time.perf_counter()
    async with session.post(
        url, data=body, headers={"Content-Type": "application/json", "Authorization": f"Bearer {BENCH_KEY}"}
    ) as resp:
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}")
        if stream:
            await resp.content.readany()
            elapsed = time.perf_counter() - start
            await resp.read()
            return elapsed
        await resp.read()
        return time.perf_counter() - start


async def _load(url: str, rate: float, duration_s: float, stream: bool) -> dict:
    """Open loop: request i starts at t0 + i/rate regardless of earlier answers (no coordinated omission hiding)."""
    import aiohttp

    body = json.dumps({**CHAT_BODY, "stream": stream}).encode()
    latencies: list[float] = []
    errors: dict[str, int] = {}
    late = 0
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as session:
        for _ in range(20):  # warm the connection pool
            await _one(session, url, body, stream)

        async def run_one() -> None:
            try:
                latencies.append(await _one(session, url, body, stream))
            except Exception as exc:  # noqa: BLE001 - every failure is counted by kind
                key = str(exc) if isinstance(exc, RuntimeError) else type(exc).__name__
                errors[key] = errors.get(key, 0) + 1

        if rate == 0:  # closed loop, one request in flight: the proxy's own cost without any queueing
            t0 = time.perf_counter()
            n = 0
            while time.perf_counter() - t0 < duration_s:
                await run_one()
                n += 1
            return {"requests": n, "errors": errors, "sent_late_over_5ms": 0, "sent_s": time.perf_counter() - t0,
                    "latencies_ms": [round(x * 1000, 4) for x in latencies]}  # fmt: skip
        n = int(rate * duration_s)
        tasks = []
        t0 = time.perf_counter() + 0.05
        for i in range(n):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.005:
                late += 1
            tasks.append(asyncio.create_task(run_one()))
        sent_s = time.perf_counter() - t0
        await asyncio.gather(*tasks)
    return {"requests": n, "errors": errors, "sent_late_over_5ms": late, "sent_s": sent_s,
            "latencies_ms": [round(x * 1000, 4) for x in latencies]}  # fmt: skip


def aggregate(slices: list[dict]) -> dict:
    """Percentiles over all slices of one (mode, rate, target)."""
    latencies = sorted(x for s in slices for x in s.get("latencies_ms", ()))
    errors: dict[str, int] = {}
    for s in slices:
        for key, count in s.get("errors", {}).items():
            errors[key] = errors.get(key, 0) + count
        if "failed" in s:
            errors["client failed"] = errors.get("client failed", 0) + 1
    requests = sum(s.get("requests", 0) for s in slices)
    sent_s = sum(s.get("sent_s", 0) for s in slices)
    return {
        "requests": requests, "ok": len(latencies), "errors": errors,
        "sent_late_over_5ms": sum(s.get("sent_late_over_5ms", 0) for s in slices),
        "achieved_rate_per_s": round(requests / sent_s, 1) if sent_s else None,
        "p50_ms": round(percentile(latencies, 50), 3), "p90_ms": round(percentile(latencies, 90), 3),
        "p99_ms": round(percentile(latencies, 99), 3),
        "mean_ms": round(sum(latencies) / max(1, len(latencies)), 3),
    }  # fmt: skip


def client_main(args: argparse.Namespace) -> None:
    import uvloop

    uvloop.install()
    print(json.dumps(asyncio.run(_load(args.url, args.rate, args.duration, args.stream))))


def run_client(url: str, rate: float, duration_s: float, stream: bool) -> dict:
    """The load generator in its own process, so its CPU use does not share an event loop with anything."""
    cmd = [PY, __file__, "client", "--url", url, "--rate", str(rate), "--duration", str(duration_s)]
    if stream:
        cmd.append("--stream")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 120)
    if out.returncode != 0:
        return {"failed": out.stderr[-2000:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def wait_idle(procs: Processes, max_wait_s: float = 60.0) -> None:
    """An overloaded proxy keeps working off its backlog after the client gave up; wait for that to end so it
    does not eat the CPU of the next target's slice."""
    import psutil

    deadline = time.monotonic() + max_wait_s
    watched = [psutil.Process(p.pid) for p in procs.procs if p.poll() is None]
    while time.monotonic() < deadline:
        for proc in watched:
            proc.cpu_percent(None)
        time.sleep(0.5)
        if all(proc.cpu_percent(None) < 10 for proc in watched):
            return


def start_targets(procs: Processes, tmp: Path, targets: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    bport = free_port()
    procs.start([PY, "-m", "gpumix.gateway.fake_backend", "--port", str(bport), "--chunks", "8"], "backend")
    backend = f"http://127.0.0.1:{bport}"
    wait_http(backend + "/health")
    urls = {"direct": backend}
    skipped: dict[str, str] = {}
    if "gpumix" in targets:
        port = free_port()
        procs.start([PY, "-m", "gpumix", "gateway", "--port", str(port), "--backend", f"chat={backend}"], "gpumix",
                    env={"GPUMIX_API_KEYS": BENCH_KEY})  # fmt: skip
        urls["gpumix"] = f"http://127.0.0.1:{port}"
        wait_http(urls["gpumix"] + "/health")
    if "caddy" in targets:
        caddy = shutil.which("caddy")
        if caddy is None:
            skipped["caddy"] = "caddy not installed (apt-get install caddy)"
        else:
            port = free_port()
            caddyfile = tmp / "Caddyfile"
            # Same shape as gpumix's Caddy export (reference/engines.md §7): flush_interval -1 for SSE.
            caddyfile.write_text(
                "{\n\tadmin off\n\tauto_https off\n}\n"
                f":{port} {{\n\treverse_proxy 127.0.0.1:{bport} {{\n\t\tflush_interval -1\n\t}}\n}}\n"
            )
            procs.start([caddy, "run", "--config", str(caddyfile), "--adapter", "caddyfile"], "caddy")
            urls["caddy"] = f"http://127.0.0.1:{port}"
            wait_http(urls["caddy"] + "/health")
    if "litellm" in targets:
        if not LITELLM_BIN.exists():
            skipped["litellm"] = f"{LITELLM_BIN} not installed"
        else:
            port = free_port()
            config = tmp / "litellm.yaml"
            config.write_text(
                "model_list:\n  - model_name: chat\n    litellm_params:\n      model: openai/chat\n"
                f"      api_base: http://127.0.0.1:{bport}/v1\n      api_key: none\n"
                "litellm_settings:\n  telemetry: false\n  drop_params: true\n"
                f"general_settings:\n  master_key: {BENCH_KEY}\n"
            )
            procs.start([str(LITELLM_BIN), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
                        "litellm", env={"LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False"})  # fmt: skip
            urls["litellm"] = f"http://127.0.0.1:{port}"
            wait_http(urls["litellm"] + "/health/liveliness", timeout_s=180)
    return urls, skipped


def summarise(results: dict) -> dict:
    """Added p50/p99 of each proxy over the direct baseline, and the ratio to gpumix's added latency."""
    added: dict = {}
    for mode, by_rate in results.items():
        for rate, by_target in by_rate.items():
            direct = by_target.get("direct", {})
            for target, r in by_target.items():
                if target == "direct" or "p50_ms" not in r or "p50_ms" not in direct:
                    continue
                added.setdefault(mode, {}).setdefault(rate, {})[target] = {
                    "added_p50_ms": round(r["p50_ms"] - direct["p50_ms"], 3),
                    "added_p99_ms": round(r["p99_ms"] - direct["p99_ms"], 3),
                    "errors": sum(r["errors"].values()),
                }
            row = added.get(mode, {}).get(rate, {})
            if "gpumix" in row:
                base = row["gpumix"]
                for target, a in row.items():
                    if target != "gpumix":
                        a["p50_ratio_vs_gpumix"] = (
                            round(a["added_p50_ms"] / base["added_p50_ms"], 1) if base["added_p50_ms"] > 0 else None
                        )
                        a["p99_ratio_vs_gpumix"] = round(a["added_p99_ms"] / base["added_p99_ms"], 1) if base["added_p99_ms"] > 0 else None  # fmt: skip
    return added


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd")
    client = sub.add_parser("client")
    client.add_argument("--url", required=True)
    client.add_argument("--rate", type=float, required=True)
    client.add_argument("--duration", type=float, required=True)
    client.add_argument("--stream", action="store_true")
    parser.add_argument("--rates", type=float, nargs="+", default=[100, 500, 1000], help="0 = one request at a time")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per (target, rate, mode); ≤ 30")
    parser.add_argument("--rounds", type=int, default=2, help="slices per target, interleaved with the others")
    parser.add_argument("--targets", nargs="+", default=["gpumix", "caddy", "litellm"])
    parser.add_argument("--modes", nargs="+", default=["json", "stream"])
    parser.add_argument("--out", type=Path, default=Path("bench/gateway/results/latency.json"))
    args = parser.parse_args()
    if args.cmd == "client":
        client_main(args)
        return
    args.duration = min(args.duration, 30.0)
    with tempfile.TemporaryDirectory(prefix="gpumix-bench-") as tmp:
        procs = Processes(Path(tmp))
        try:
            urls, skipped = start_targets(procs, Path(tmp), args.targets)
            results: dict = {}
            # Each (mode, rate) runs every target in `rounds` slices, rotating the order, so that the load other
            # users put on this shared machine falls on all targets alike.
            slice_s = args.duration / args.rounds
            for mode in args.modes:
                for rate in args.rates:
                    slices: dict[str, list[dict]] = {t: [] for t in urls}
                    names = list(urls)
                    for rnd in range(args.rounds):
                        for target in names[rnd % len(names) :] + names[: rnd % len(names)]:
                            url = urls[target] + "/v1/chat/completions"
                            slices[target].append(run_client(url, rate, slice_s, mode == "stream"))
                            wait_idle(procs)
                    for target, target_slices in slices.items():
                        r = aggregate(target_slices)
                        r["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
                        results.setdefault(mode, {}).setdefault(str(int(rate)), {})[target] = r
                        print(mode, int(rate), target, {k: r.get(k) for k in ("p50_ms", "p99_ms", "ok", "errors")},
                              flush=True)  # fmt: skip
        finally:
            procs.stop_all()
    out = {
        "command": "python bench/gateway/latency_bench.py " + " ".join(
            ["--rates", *[str(int(r)) for r in args.rates], "--duration", str(args.duration), "--rounds", str(args.rounds)]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "duration_s_per_target": args.duration, "rounds": args.rounds, "skipped": skipped, "results": results, "added": summarise(results),
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["added"], indent=2))


if __name__ == "__main__":
    main()
