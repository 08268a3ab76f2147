"""Replicas of different speed behind the gateway: least outstanding requests vs the plan's replica shares.

The plan of examples/4090-3060-8b-throughput.yaml gives chat two replicas: the 4090 serving 14 of the 16 streams, the
3060 serving 2 (`replica_concurrency`, `replica_shares`), each llama-server with that many slots (-np). Two stand-in
engines reproduce what matters to the balancer: N slots (requests beyond them wait in the engine's queue) and each
stream's decode speed = the replica's predicted aggregate ÷ its streams, for `--tokens` output tokens per request
(time scaled by `--time-scale` to keep the run short). 16 closed-loop clients send through `gpumix gateway` with
`--balance least-outstanding` and with `--balance shares`; requests/s, tokens/s (unscaled) and latency are measured.

    .venv/bin/python bench/gateway/replica_balance_bench.py --duration 20 --rounds 2 \\
        --out bench/gateway/results/replica_balance.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import tempfile
import time
from pathlib import Path

from common import PY, REPO, Processes, free_port, percentile, wait_http

CLIENTS = 16


def engine_main(args: argparse.Namespace) -> None:
    """A stand-in engine: `slots` requests at a time, each taking `seconds` (then the next waiting one starts)."""
    from aiohttp import web

    slots = asyncio.Semaphore(args.slots)
    served = {"requests": 0}

    async def chat(request: web.Request) -> web.Response:
        await request.read()
        async with slots:
            await asyncio.sleep(args.seconds)
        served["requests"] += 1
        return web.json_response({"choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}}],
                                  "usage": {"completion_tokens": args.tokens}})  # fmt: skip

    async def health(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def stats(_request: web.Request) -> web.Response:
        return web.json_response(served)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/health", health)
    app.router.add_get("/stats", stats)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


async def _clients(url: str, duration_s: float) -> dict:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    body = json.dumps({"model": "chat", "messages": [{"role": "user", "content": "hi"}]}).encode()
    deadline = time.monotonic() + duration_s

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while time.monotonic() < deadline:
            start = time.monotonic()
            try:
                async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
                    await resp.read()
                    if resp.status != 200:
                        errors += 1
                        continue
            except aiohttp.ClientError:
                errors += 1
                continue
            latencies.append(time.monotonic() - start)

    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        started = time.monotonic()
        await asyncio.gather(*(client(session) for _ in range(CLIENTS)))
        elapsed = time.monotonic() - started
    latencies.sort()
    return {"requests": len(latencies), "errors": errors, "elapsed_s": elapsed,
            "p50_s": percentile(latencies, 50), "p95_s": percentile(latencies, 95)}  # fmt: skip


def _plan(tmp: Path) -> tuple[Path, dict]:
    out = tmp / "plan.json"
    subprocess.run([PY, "-m", "gpumix", "plan", str(REPO / "examples/4090-3060-8b-throughput.yaml"), "-o", str(out),
                    "--json"], check=True, capture_output=True, cwd=REPO)  # fmt: skip
    plan = json.loads(out.read_text())
    (chat,) = [s for s in plan["services"] if s["name"] == "chat"]
    return out, chat


def _per_stream_tokens_per_s(chat: dict) -> list[float]:
    """Each replica's predicted aggregate at its streams ÷ its streams (one-card estimates, as the planner makes)."""
    from gpumix.estimate import Placement, Workload, estimate
    from gpumix.hardware.catalog import resolve_gpu
    from gpumix.hardware.devices import device_from_spec
    from gpumix.models.catalog import load_model, resolve_quant

    model, quant = load_model(chat["model"]), resolve_quant(chat["quant"])
    speeds = []
    for gpu, n, tokens in zip(("RTX 4090", "RTX 3060 12GB"), chat["replica_concurrency"],
                              chat["replica_kv_cache_tokens"], strict=True):  # fmt: skip
        device = device_from_spec(resolve_gpu(gpu), 0)
        est = estimate(model, quant, Placement(mode="single", devices=(device,)),
                       Workload(context=chat["context"], parallel=n, kv_tokens=tokens))  # fmt: skip
        speeds.append(est.aggregate_tokens_per_s / n)
    return speeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("engine", nargs="?", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--slots", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--tokens", type=int, default=256, help="output tokens per request")
    parser.add_argument("--time-scale", type=float, default=0.1, help="engine time = real decode time × this")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "bench/gateway/results/replica_balance.json")
    args = parser.parse_args()
    if args.engine == "engine":
        engine_main(args)
        return
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        plan_path, chat = _plan(tmp)
        speeds = _per_stream_tokens_per_s(chat)
        procs = Processes(tmp)
        try:
            urls = []
            for i, (slots, speed) in enumerate(zip(chat["replica_concurrency"], speeds, strict=True)):
                port = free_port()
                seconds = args.tokens / speed * args.time_scale
                procs.start([PY, __file__, "engine", "--port", str(port), "--slots", str(slots), "--seconds",
                             f"{seconds:.6f}", "--tokens", str(args.tokens)], f"engine{i}")  # fmt: skip
                urls.append(f"http://127.0.0.1:{port}")
            for url in urls:
                wait_http(url + "/health")
            results: dict[str, list[dict]] = {"least-outstanding": [], "shares": []}
            for _ in range(args.rounds):
                for mode in results:
                    port = free_port()
                    gw = procs.start([PY, "-m", "gpumix", "gateway", "--plan", str(plan_path), "--port", str(port),
                                      "--balance", mode, *[a for u in urls for a in ("--backend", f"chat={u}")]],
                                     f"gateway-{mode}")  # fmt: skip
                    wait_http(f"http://127.0.0.1:{port}/health")
                    run = asyncio.run(_clients(f"http://127.0.0.1:{port}/v1/chat/completions", args.duration))
                    run["tokens_per_s"] = run["requests"] * args.tokens / run["elapsed_s"] * args.time_scale
                    results[mode].append(run)
                    gw.terminate()
                    gw.wait(10)
        finally:
            procs.stop_all()
    bound = sum(n * s for n, s in zip(chat["replica_concurrency"], speeds, strict=True))
    summary = {
        "command": "python bench/gateway/replica_balance_bench.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in (("duration", args.duration), ("rounds", args.rounds),
                                                        ("tokens", args.tokens), ("time_scale", args.time_scale))),
        "replica_concurrency": chat["replica_concurrency"], "replica_shares": chat["replica_shares"],
        "per_stream_tokens_per_s": [round(s, 1) for s in speeds], "planned_aggregate_tokens_per_s": round(bound, 1),
        "clients": CLIENTS, "results": results,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    for mode, runs in results.items():
        tps = sorted(r["tokens_per_s"] for r in runs)
        p95 = max(r["p95_s"] for r in runs) / args.time_scale
        print(f"{mode:18s} tokens/s {tps} (planned {bound:.0f}), p95 latency {p95:.1f} s (unscaled), "
              f"errors {sum(r['errors'] for r in runs)}")


if __name__ == "__main__":
    main()
