"""Queue throughput, per-job overhead, and the 10,000-job SIGKILL run, against a real redis-server.

    .venv/bin/python bench/gateway/queue_bench.py --jobs 10000 --out bench/gateway/results/queue.json

1. Overhead: 200 jobs one at a time (submit → poll until done) vs 200 direct requests to the same backend.
2. Throughput: N jobs submitted at once to two workers (16 in flight each), time until all are done.
3. Fault: N jobs again; one worker is SIGKILLed while it has jobs in flight; the other claims them after the
   visibility timeout. Counts jobs done, lost, dead-lettered, and duplicate executions (seen by the backend).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
from common import PY, Processes, free_port, percentile, wait_http

from gpumix.gateway.queue import JobQueue, QueueSettings

VISIBILITY_S = 2.0


def start_worker(procs: Processes, redis_url: str, backend: str, prefix: str, name: str) -> subprocess.Popen:
    code = (
        "from gpumix.gateway.queue import QueueSettings, run_worker; "
        f"run_worker({redis_url!r}, 'bench', {backend!r}, 16, QueueSettings(prefix={prefix!r}, "
        f"visibility_timeout_s={VISIBILITY_S}, max_attempts=5))"
    )
    return procs.start([PY, "-c", code], name)


async def submit_all(q: JobQueue, n: int) -> list[str]:
    ids: list[str] = []
    for start in range(0, n, 200):
        batch = await asyncio.gather(*(q.submit("bench", "/v1/chat/completions", {"messages": [f"job {i}"]})
                                       for i in range(start, min(n, start + 200))))  # fmt: skip
        ids += [i for i, _ in batch]
    return ids


async def statuses(q: JobQueue, ids: list[str]) -> list[str | None]:
    out: list[str | None] = []
    for start in range(0, len(ids), 1000):
        async with q.redis.pipeline(transaction=False) as pipe:
            for job_id in ids[start : start + 1000]:
                pipe.hget(q.job_key(job_id), "status")
            out += await pipe.execute()
    return out


async def wait_all(q: JobQueue, ids: list[str], timeout_s: float) -> float:
    start = time.perf_counter()
    while True:
        s = await statuses(q, ids)
        if all(x in ("done", "dead") for x in s) or time.perf_counter() - start > timeout_s:
            return time.perf_counter() - start
        await asyncio.sleep(0.1)


async def overhead(q: JobQueue, backend: str, n: int = 200) -> dict:
    direct, queued = [], []
    async with httpx.AsyncClient() as client:
        for _ in range(n):
            t = time.perf_counter()
            await client.post(backend + "/v1/chat/completions", json={"messages": ["x"]})
            direct.append(time.perf_counter() - t)
    for _ in range(n):
        t = time.perf_counter()
        job_id, _ = await q.submit("bench", "/v1/chat/completions", {"messages": ["x"]})
        await q.wait(job_id, 30, poll_s=0.001)
        queued.append(time.perf_counter() - t)
    direct.sort()
    queued.sort()
    return {
        "jobs": n, "direct_p50_ms": round(percentile(direct, 50) * 1e3, 3),
        "queued_p50_ms": round(percentile(queued, 50) * 1e3, 3), "queued_p99_ms": round(percentile(queued, 99) * 1e3, 3),
        "overhead_p50_ms": round((percentile(queued, 50) - percentile(direct, 50)) * 1e3, 3),
        "note": "queued = submit + worker pickup + backend call + result store + 1 ms polling",
    }  # fmt: skip


async def run(args: argparse.Namespace, procs: Processes, redis_url: str, backend: str) -> dict:
    out: dict = {}
    prefix = "bench1"
    q = JobQueue(redis_url, QueueSettings(prefix=prefix))
    await q.ensure_group("bench")
    workers = [start_worker(procs, redis_url, backend, prefix, f"w{i}") for i in range(2)]
    await asyncio.sleep(2.0)
    out["overhead"] = await overhead(q, backend)
    t0 = time.perf_counter()
    ids = await submit_all(q, args.jobs)
    submit_s = time.perf_counter() - t0
    wait_all_s = await wait_all(q, ids, 600)
    s = await statuses(q, ids)
    total_s = time.perf_counter() - t0
    out["throughput"] = {"jobs": args.jobs, "workers": 2, "in_flight_per_worker": 16, "submit_s": round(submit_s, 2),
                         "total_s": round(total_s, 2), "drain_after_submit_s": round(wait_all_s, 2),
                         "jobs_per_s": round(args.jobs / total_s, 1), "done": s.count("done")}  # fmt: skip
    for w in workers:
        os.killpg(w.pid, signal.SIGTERM)
    await q.close()

    # Fault run: fresh keys, fresh workers; SIGKILL one mid-run.
    prefix = "bench2"
    q = JobQueue(redis_url, QueueSettings(prefix=prefix))
    await q.ensure_group("bench")
    before = httpx.get(backend + "/stats").json()["executions"]
    ids = await submit_all(q, args.jobs)
    t0 = time.perf_counter()
    victim = start_worker(procs, redis_url, backend, prefix, "victim")
    survivor = start_worker(procs, redis_url, backend, prefix, "survivor")
    while (await statuses(q, ids)).count("done") < args.jobs // 3:
        await asyncio.sleep(0.05)
    pending = (await q.redis.xpending(q.stream_key("bench"), "workers"))["pending"]
    os.killpg(victim.pid, signal.SIGKILL)
    killed_at_done = (await statuses(q, ids)).count("done")
    await wait_all(q, ids, 600)
    total_s = time.perf_counter() - t0
    s = await statuses(q, ids)
    executions = httpx.get(backend + "/stats").json()["executions"]
    per_job = [executions.get(i, 0) - before.get(i, 0) for i in ids]
    results_ok = 0
    for start in range(0, len(ids), 1000):
        async with q.redis.pipeline(transaction=False) as pipe:
            for job_id in ids[start : start + 1000]:
                pipe.hget(q.job_key(job_id), "result")
            for offset, result in enumerate(await pipe.execute()):
                i = start + offset
                content = json.loads(result)["choices"][0]["message"]["content"] if result else None
                results_ok += content == json.dumps([f"job {i}"])
    out["sigkill_worker"] = {
        "jobs": args.jobs, "killed_after_done": killed_at_done, "pending_at_kill": pending,
        "visibility_timeout_s": VISIBILITY_S, "done": s.count("done"), "dead": s.count("dead"),
        "lost": sum(x not in ("done", "dead") for x in s), "results_matching_their_job": results_ok,
        "executions": sum(per_job), "jobs_executed_more_than_once": sum(n > 1 for n in per_job),
        "duplicate_executions": sum(n - 1 for n in per_job if n > 1), "never_executed": per_job.count(0),
        "total_s": round(total_s, 2), "survivor_alive": survivor.poll() is None,
    }  # fmt: skip
    await q.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=Path("bench/gateway/results/queue.json"))
    args = parser.parse_args()
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    with tempfile.TemporaryDirectory(prefix="gpumix-qbench-") as tmp:
        procs = Processes(Path(tmp))
        try:
            rport = free_port()
            procs.start([redis_server, "--port", str(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                         "--dir", tmp], "redis")  # fmt: skip
            bport = free_port()
            procs.start([PY, "-m", "gpumix.gateway.fake_backend", "--port", str(bport)], "backend")
            backend = f"http://127.0.0.1:{bport}"
            wait_http(backend + "/health")
            time.sleep(0.5)
            result = asyncio.run(run(args, procs, f"redis://127.0.0.1:{rport}/0", backend))
        finally:
            procs.stop_all()
    result = {"command": f"python bench/gateway/queue_bench.py --jobs {args.jobs}", "cpus": os.cpu_count(),
              "loadavg_1m_after": round(os.getloadavg()[0], 2), **result}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
