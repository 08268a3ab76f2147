"""Job queue on Redis Streams: one stream per GPU class (service), one consumer group of workers per stream.

At-least-once: a job's stream entry is acknowledged only after its result is stored. A worker that dies leaves
its entries pending; another worker claims them with XAUTOCLAIM once they have been idle for the visibility
timeout. Each start of a job bumps its `attempts`; past `max_attempts` the job goes to the dead-letter stream.
A job's result is written once (a Lua check-and-set), so duplicates in execution never duplicate results.

Keys (prefix `gpumix`): `jobs:{class}` stream, `dead:{class}` dead letters, `job:{id}` hash, `idem:{key}` → id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.typing import EncodableT, FieldT

from gpumix.errors import GpumixError

REDIS_URL_ENV = "GPUMIX_REDIS_URL"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
GROUP = "workers"

# Store the result and mark the job done only if no other execution got there first; returns 1 when it wrote.
_COMPLETE_LUA = """
if redis.call('HGET', KEYS[1], 'status') == 'done' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'done', 'result', ARGV[1], 'http_status', ARGV[2], 'finished_at', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""


def redis_url_from_env(url: str | None = None) -> str:
    return url or os.environ.get(REDIS_URL_ENV, DEFAULT_REDIS_URL)


@dataclass(frozen=True)
class QueueSettings:
    prefix: str = "gpumix"
    result_ttl_s: int = 24 * 3600
    idempotency_ttl_s: int = 24 * 3600
    visibility_timeout_s: float = 60.0  # a pending job idle this long is claimed by another worker
    max_attempts: int = 3


@dataclass(frozen=True)
class Job:
    id: str
    job_class: str
    endpoint: str
    status: str  # queued | running | done | dead
    attempts: int
    created_at: float
    finished_at: float | None
    http_status: int | None
    result: str | None
    error: str | None

    def public(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id, "object": "job", "status": self.status, "class": self.job_class,
            "endpoint": self.endpoint, "attempts": self.attempts, "created_at": self.created_at,
            "finished_at": self.finished_at,
        }  # fmt: skip
        if self.status == "done":
            out["http_status"] = self.http_status
            try:
                out["result"] = json.loads(self.result or "null")
            except ValueError:
                out["result"] = self.result
        if self.error:
            out["error"] = self.error
        return out


def _text(value: bytes | str) -> str:
    """A Redis reply as text (the pool decodes replies already; redis-py's types also allow bytes)."""
    return value.decode() if isinstance(value, bytes) else value


def _job_from_hash(job_id: str, h: dict[str, str]) -> Job:
    return Job(
        id=job_id,
        job_class=h.get("class", ""),
        endpoint=h.get("endpoint", ""),
        status=h.get("status", "queued"),
        attempts=int(h.get("attempts", 0)),
        created_at=float(h.get("created_at", 0)),
        finished_at=float(h["finished_at"]) if "finished_at" in h else None,
        http_status=int(h["http_status"]) if "http_status" in h else None,
        result=h.get("result"),
        error=h.get("error"),
    )


class JobQueue:
    def __init__(self, redis_url: str, settings: QueueSettings = QueueSettings()) -> None:
        self.settings = settings
        # A blocking pool: a burst of submits waits for a connection instead of failing or opening hundreds.
        pool = aioredis.BlockingConnectionPool.from_url(
            redis_url, max_connections=64, timeout=30, decode_responses=True
        )
        self.redis = aioredis.Redis(connection_pool=pool)
        self._complete = self.redis.register_script(_COMPLETE_LUA)

    async def close(self) -> None:
        await self.redis.aclose(close_connection_pool=True)

    def stream_key(self, job_class: str) -> str:
        return f"{self.settings.prefix}:jobs:{job_class}"

    def dead_key(self, job_class: str) -> str:
        return f"{self.settings.prefix}:dead:{job_class}"

    def job_key(self, job_id: str) -> str:
        return f"{self.settings.prefix}:job:{job_id}"

    async def submit(self, job_class: str, endpoint: str, body: dict, idempotency_key: str | None = None
                     ) -> tuple[str, bool]:  # fmt: skip
        """Queue a job; returns (job id, created). A repeated idempotency key returns the first job's id."""
        job_id = uuid.uuid4().hex
        if idempotency_key:
            key = f"{self.settings.prefix}:idem:{job_class}:{idempotency_key}"
            if not await self.redis.set(key, job_id, nx=True, ex=self.settings.idempotency_ttl_s):
                existing = await self.redis.get(key)
                if existing:
                    return _text(existing), False
        fields: dict[FieldT, EncodableT] = {"class": job_class, "endpoint": endpoint, "body": json.dumps(body), "status": "queued",
                  "attempts": 0, "created_at": time.time()}  # fmt: skip
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.job_key(job_id), mapping=fields)
            pipe.xadd(self.stream_key(job_class), {"id": job_id})
            await pipe.execute()
        return job_id, True

    async def status(self, job_id: str) -> Job | None:
        h = await self.redis.hgetall(self.job_key(job_id))
        return _job_from_hash(job_id, {_text(k): _text(v) for k, v in h.items()}) if h else None

    async def wait(self, job_id: str, timeout_s: float, poll_s: float = 0.05) -> Job | None:
        deadline = time.monotonic() + timeout_s
        while True:
            job = await self.status(job_id)
            if job is None or job.status in ("done", "dead") or time.monotonic() >= deadline:
                return job
            await asyncio.sleep(poll_s)

    async def ensure_group(self, job_class: str) -> None:
        try:
            await self.redis.xgroup_create(self.stream_key(job_class), GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def complete(self, job_class: str, msg_id: str, job_id: str, result: str, http_status: int) -> bool:
        wrote = await self._complete(
            keys=[self.job_key(job_id)], args=[result, http_status, time.time(), self.settings.result_ttl_s]
        )
        await self._ack(job_class, msg_id)
        return bool(wrote)

    async def _ack(self, job_class: str, msg_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.stream_key(job_class), GROUP, msg_id)
            pipe.xdel(self.stream_key(job_class), msg_id)
            await pipe.execute()

    async def dead_letter(self, job_class: str, msg_id: str, job_id: str, reason: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.job_key(job_id), mapping={"status": "dead", "error": reason, "finished_at": time.time()})
            pipe.expire(self.job_key(job_id), self.settings.result_ttl_s)
            pipe.xadd(self.dead_key(job_class), {"id": job_id, "reason": reason})
            pipe.xack(self.stream_key(job_class), GROUP, msg_id)
            pipe.xdel(self.stream_key(job_class), msg_id)
            await pipe.execute()

    async def requeue(self, job_class: str, msg_id: str, job_id: str, reason: str) -> None:
        """A failed attempt goes back to the end of the stream now rather than after the visibility timeout."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.job_key(job_id), mapping={"status": "queued", "error": reason})
            pipe.xadd(self.stream_key(job_class), {"id": job_id})
            pipe.xack(self.stream_key(job_class), GROUP, msg_id)
            pipe.xdel(self.stream_key(job_class), msg_id)
            await pipe.execute()


class Worker:
    """Pulls jobs of one class with the consumer group, sends each to its backend, stores the result, acks."""

    def __init__(self, queue: JobQueue, job_class: str, backend_url: str, concurrency: int = 8,
                 consumer: str | None = None, request_timeout_s: float = 600.0) -> None:  # fmt: skip
        self.queue = queue
        self.job_class = job_class
        self.backend_url = backend_url.rstrip("/")
        self.concurrency = concurrency
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.timeout = aiohttp.ClientTimeout(total=request_timeout_s)
        self.completed = 0
        self.duplicates = 0  # executions whose result another execution had already stored
        self._inflight: set[asyncio.Task] = set()
        self._slots = asyncio.Semaphore(concurrency)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        await self.queue.ensure_group(self.job_class)
        stream = self.queue.stream_key(self.job_class)
        vis_ms = int(self.queue.settings.visibility_timeout_s * 1000)
        next_claim = 0.0
        async with aiohttp.ClientSession(timeout=self.timeout) as session:
            while not stop.is_set():
                if time.monotonic() >= next_claim:
                    await self._claim_stale(session, stream, vis_ms)
                    next_claim = time.monotonic() + max(0.2, self.queue.settings.visibility_timeout_s / 4)
                await self._slots.acquire()
                self._slots.release()
                free = self._free_slots()
                reply = await self.queue.redis.xreadgroup(GROUP, self.consumer, {stream: ">"}, count=free, block=200)
                # RESP2 (this pool's protocol): [[stream, [(id, fields), ...]], ...]; None when the block timed out
                for _stream, messages in reply if isinstance(reply, list) else ():
                    for msg_id, fields in messages:
                        await self._spawn(session, msg_id, fields.get("id", ""))
            if self._inflight:
                await asyncio.gather(*self._inflight, return_exceptions=True)

    def _free_slots(self) -> int:
        return max(1, self.concurrency - len(self._inflight))

    async def _claim_stale(self, session: aiohttp.ClientSession, stream: str, vis_ms: int) -> None:
        start = "0-0"
        while True:
            start, claimed, *_ = await self.queue.redis.xautoclaim(
                stream, GROUP, self.consumer, min_idle_time=vis_ms, start_id=start, count=self.concurrency
            )
            for msg_id, fields in claimed:
                if fields:  # a deleted entry comes back empty
                    await self._spawn(session, msg_id, fields.get("id", ""))
            if start == "0-0" or not claimed:
                return

    async def _spawn(self, session: aiohttp.ClientSession, msg_id: str, job_id: str) -> None:
        await self._slots.acquire()
        task = asyncio.create_task(self._process(session, msg_id, job_id))
        self._inflight.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._inflight.discard(task)
        self._slots.release()

    async def _process(self, session: aiohttp.ClientSession, msg_id: str, job_id: str) -> None:
        q = self.queue
        key = q.job_key(job_id)
        async with q.redis.pipeline(transaction=True) as pipe:
            pipe.hincrby(key, "attempts", 1)
            pipe.hget(key, "status")
            pipe.hmget(key, "endpoint", "body")
            attempts, status, (endpoint, body) = await pipe.execute()
        if body is None or status in ("done", "dead"):
            await q._ack(self.job_class, msg_id)  # expired, unknown, or already finished by another execution
            return
        if attempts > q.settings.max_attempts:
            await q.dead_letter(self.job_class, msg_id, job_id, f"gave up after {attempts - 1} attempts")
            return
        await q.redis.hset(key, mapping={"status": "running", "worker": self.consumer})
        try:
            headers = {"Content-Type": "application/json", "X-Gpumix-Job-Id": job_id}
            async with session.post(self.backend_url + endpoint, data=body, headers=headers) as resp:
                result = await resp.text()
                status_code = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            await self._retry_or_dead(msg_id, job_id, attempts, f"{type(exc).__name__}: {exc}")
            return
        if status_code >= 500:
            await self._retry_or_dead(msg_id, job_id, attempts, f"backend answered HTTP {status_code}")
            return
        if await q.complete(self.job_class, msg_id, job_id, result, status_code):
            self.completed += 1
        else:
            self.duplicates += 1

    async def _retry_or_dead(self, msg_id: str, job_id: str, attempts: int, reason: str) -> None:
        if attempts >= self.queue.settings.max_attempts:
            await self.queue.dead_letter(self.job_class, msg_id, job_id, reason)
        else:
            await self.queue.requeue(self.job_class, msg_id, job_id, reason)


def run_worker(redis_url: str, job_class: str, backend_url: str, concurrency: int, settings: QueueSettings) -> None:
    async def main() -> None:
        queue = JobQueue(redis_url, settings)
        try:
            await queue.redis.ping()
        except (OSError, RedisConnectionError) as exc:
            raise GpumixError(
                f"cannot reach Redis at {redis_url}: {exc}", hint="start redis-server or pass --redis URL"
            ) from exc
        worker = Worker(queue, job_class, backend_url, concurrency)
        print(f"gpumix queue worker {worker.consumer}: class {job_class} → {backend_url}", flush=True)
        try:
            await worker.run()
        finally:
            await queue.close()

    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(main())
