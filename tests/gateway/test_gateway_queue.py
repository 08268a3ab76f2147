"""Queue mode against a real redis-server: submit/results, idempotency, dead letters, a SIGKILLed worker, CLI,
and the gateway's `Prefer: respond-async`."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import httpx
import pytest
import redis.asyncio as aioredis
from gwhelpers import PY, Procs

from gpumix.gateway.queue import JobQueue, QueueSettings, Worker
from gpumix.netutil import free_port

# The issue asks for 10,000 jobs; that run lives in bench/gateway/queue_bench.py (result committed). The suite
# runs 1,500 so the whole gateway area stays within its CI budget on 2 cores.
KILL_TEST_JOBS = 1500


def _fresh_prefix() -> str:
    return f"t{os.getpid()}{time.monotonic_ns()}"


async def _submit_many(q: JobQueue, job_class: str, n: int) -> list[str]:
    ids: list[str] = []
    for start in range(0, n, 100):
        batch = await asyncio.gather(
            *(q.submit(job_class, "/v1/chat/completions", {"messages": [{"role": "user", "content": f"job {i}"}]})
              for i in range(start, min(n, start + 100)))
        )  # fmt: skip
        ids += [job_id for job_id, _ in batch]
    return ids


def test_submit_work_result_idempotency_and_dead_letter(redis_url: str, procs: Procs) -> None:
    backend, _ = procs.backend(name="b")
    prefix = _fresh_prefix()

    async def run() -> None:
        q = JobQueue(redis_url, QueueSettings(prefix=prefix, max_attempts=2, result_ttl_s=300))
        try:
            first, created = await q.submit("gpu-a", "/v1/chat/completions", {"messages": ["x"]}, idempotency_key="k1")
            again, created_again = await q.submit("gpu-a", "/v1/chat/completions", {"messages": ["x"]},
                                                  idempotency_key="k1")  # fmt: skip
            assert created and not created_again and again == first
            other, _ = await q.submit("gpu-b", "/v1/chat/completions", {"messages": ["y"]})
            stop = asyncio.Event()
            worker = Worker(q, "gpu-a", backend, concurrency=2)
            task = asyncio.create_task(worker.run(stop))
            job = await q.wait(first, 5)
            assert job is not None and job.status == "done" and job.http_status == 200 and job.attempts == 1
            assert json.loads(job.result)["choices"][0]["message"]["content"] == '["x"]'
            assert 0 < await q.redis.ttl(q.job_key(first)) <= 300
            # A worker only takes its own class: gpu-b's job is untouched.
            assert (await q.status(other)).status == "queued"
            stop.set()
            await task
            # A backend that is down: retried, then dead-lettered with the reason.
            dead_worker = Worker(q, "gpu-b", f"http://127.0.0.1:{free_port()}", concurrency=1)
            stop2 = asyncio.Event()
            task2 = asyncio.create_task(dead_worker.run(stop2))
            job = await q.wait(other, 5)
            stop2.set()
            await task2
            assert job.status == "dead" and job.attempts == 2 and "ClientConnectorError" in job.error
            dead = await q.redis.xrange(q.dead_key("gpu-b"))
            assert [fields["id"] for _, fields in dead] == [other]
        finally:
            await q.close()

    asyncio.run(run())


def test_sigkill_worker_mid_job_every_job_done_exactly_once(redis_url: str, procs: Procs) -> None:
    backend, _ = procs.backend(name="b", delay_ms=10)
    prefix = _fresh_prefix()
    settings = QueueSettings(prefix=prefix, visibility_timeout_s=2.0, max_attempts=5)

    def start_worker() -> subprocess.Popen:
        code = (
            "import sys; from gpumix.gateway.queue import QueueSettings, run_worker; "
            f"run_worker({redis_url!r}, 'gpu-a', {backend!r}, 16, QueueSettings(prefix={prefix!r}, "
            "visibility_timeout_s=2.0, max_attempts=5))"
        )
        return procs.start([PY, "-c", code], "worker")

    async def run() -> dict:
        q = JobQueue(redis_url, settings)
        try:
            await q.ensure_group("gpu-a")
            ids = await _submit_many(q, "gpu-a", KILL_TEST_JOBS)
            victim, survivor = start_worker(), start_worker()
            # Kill once a good part of the work is done, while the victim has jobs in flight.
            while await _count_done(q, ids[: KILL_TEST_JOBS // 2]) < KILL_TEST_JOBS // 4:
                await asyncio.sleep(0.05)
            pending = await q.redis.xpending(q.stream_key("gpu-a"), "workers")
            procs.kill(victim)
            deadline = time.monotonic() + 90
            while (done := await _count_done(q, ids)) < len(ids):
                assert time.monotonic() < deadline, f"only {done}/{len(ids)} jobs finished"
                await asyncio.sleep(0.2)
            jobs = [await q.status(i) for i in ids]
            assert survivor.poll() is None
            return {"jobs": jobs, "pending_at_kill": pending["pending"]}
        finally:
            await q.close()

    out = asyncio.run(run())
    jobs = out["jobs"]
    assert out["pending_at_kill"] > 0  # the kill really was mid-job
    assert all(j.status == "done" and j.http_status == 200 for j in jobs)  # none lost, none dead
    # Each result is its own job's answer, stored once.
    for i, job in enumerate(jobs):
        assert json.loads(job.result)["choices"][0]["message"]["content"] == json.dumps(
            [{"role": "user", "content": f"job {i}"}]
        )
    executions = httpx.get(backend + "/stats").json()["executions"]
    assert set(executions) == {j.id for j in jobs}
    duplicates = sum(n - 1 for n in executions.values())
    print(f"\n{len(jobs)} jobs, {out['pending_at_kill']} pending at SIGKILL, {duplicates} duplicate executions")
    assert sum(j.attempts for j in jobs) >= sum(executions.values())  # every execution was counted as an attempt


async def _count_done(q: JobQueue, ids: list[str]) -> int:
    async with q.redis.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hget(q.job_key(job_id), "status")
        return sum(s == "done" for s in await pipe.execute())


def test_cli_submit_status_result(redis_url: str, procs: Procs) -> None:
    backend, _ = procs.backend(name="b")
    env = {**os.environ, "GPUMIX_REDIS_URL": redis_url}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "gpumix", "queue", *args], capture_output=True, text=True,
                              env=env, timeout=60)  # fmt: skip

    sub = cli("submit", "--class", "cli-gpu", "--body", '{"messages": ["hello"]}', "--idempotency-key", "once")
    assert sub.returncode == 0, sub.stderr
    job_id = sub.stdout.strip()
    assert cli("submit", "--class", "cli-gpu", "--body", "{}", "--idempotency-key", "once").stdout.startswith(job_id)
    status = cli("status", job_id)
    assert json.loads(status.stdout)["status"] == "queued"
    assert cli("result", job_id).returncode == 1  # not done yet
    procs.start([PY, "-m", "gpumix", "queue", "worker", "--class", "cli-gpu", "--backend", backend, "--redis", redis_url],
                "cli-worker")  # fmt: skip
    result = cli("result", job_id, "--wait", "20")
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["choices"][0]["message"]["content"] == '["hello"]'
    bad = cli("submit", "--class", "x", "--body", "{not json")
    assert bad.returncode == 2 and "not valid JSON" in bad.stderr
    unreachable = subprocess.run([sys.executable, "-m", "gpumix", "queue", "status", "x", "--redis",
                                  f"redis://127.0.0.1:{free_port()}/0"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert unreachable.returncode == 2 and "cannot reach Redis" in unreachable.stderr


def test_gateway_respond_async_returns_202_and_job(redis_url: str, procs: Procs) -> None:
    backend, _ = procs.backend(name="img")
    url, _ = procs.gateway("--backend", f"images={backend}", "--redis", redis_url)
    procs.start([PY, "-m", "gpumix", "queue", "worker", "--class", "images", "--backend", backend, "--redis", redis_url],
                "img-worker")  # fmt: skip
    headers = {"Prefer": "respond-async", "Idempotency-Key": "img-1"}
    resp = httpx.post(url + "/v1/images/generations", json={"prompt": "a cat"}, headers=headers)
    assert resp.status_code == 202 and resp.headers["Preference-Applied"] == "respond-async"
    job_id = resp.json()["id"]
    assert resp.headers["Location"] == f"/v1/jobs/{job_id}"
    assert httpx.post(url + "/v1/images/generations", json={"prompt": "a cat"}, headers=headers).json()["id"] == job_id
    deadline = time.monotonic() + 20
    while (job := httpx.get(url + f"/v1/jobs/{job_id}").json())["status"] != "done":
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    assert job["result"]["data"][0]["b64_json"] and job["http_status"] == 200
    assert httpx.get(url + "/v1/jobs/nope").status_code == 404
    sync = httpx.post(url + "/v1/images/generations", json={"prompt": "now"})  # no Prefer: answered directly
    assert sync.status_code == 200 and "data" in sync.json()


@pytest.fixture(autouse=True)
def _flush_redis_between_tests(redis_url: str):
    yield

    async def flush() -> None:
        r = aioredis.from_url(redis_url)
        await r.flushdb()
        await r.aclose()

    asyncio.run(flush())
