"""Live backend state: outstanding requests, health, circuit breaker, and the per-backend concurrency slots."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aiohttp

from gpumix.gateway.config import HealthSettings, Limits


class QueueFull(Exception):
    """The backend's wait queue is full (→ 429)."""


@dataclass
class Backend:
    service: str
    url: str
    limits: Limits
    health: HealthSettings
    outstanding: int = 0  # admitted and waiting-for-slot requests
    weight: float = 1.0  # share of the service's streams the plan gives this replica (1 each without shares)
    healthy: bool = True  # last active check (optimistic until the first one)
    consecutive_failures: int = 0
    open_until: float = 0.0  # monotonic time the circuit stays open until
    dead: bool = False  # its host is dead (the backends file says so): out until it is listed again
    inflight: set[asyncio.Timeout] = field(default_factory=set, repr=False)  # attempts waiting on it
    _slots: asyncio.Semaphore | None = field(default=None, repr=False)
    _waiting: int = 0

    @property
    def slots(self) -> asyncio.Semaphore:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.limits.max_concurrency_per_backend)
        return self._slots

    def available(self, now: float) -> bool:
        return self.healthy and now >= self.open_until and not self.dead

    def abort_inflight(self) -> int:
        """The backend's host is dead: every attempt waiting on it ends now (TimeoutError) and is retried on
        another backend; returns how many. (Nothing had reached the client yet: attempts past their first byte
        are not waiting here.)"""
        self.dead = True
        self.healthy = False
        now = asyncio.get_running_loop().time()
        scopes = list(self.inflight)
        for scope in scopes:
            scope.reschedule(now)
        return len(scopes)

    def record_success(self) -> None:
        self.consecutive_failures = 0

    def record_failure(self, *, hard: bool = False) -> None:
        """A passive failure; `hard` (connection refused/reset) opens the circuit at once."""
        self.consecutive_failures += 1
        if hard or self.consecutive_failures >= self.health.failure_threshold:
            self.open_until = time.monotonic() + self.health.cooldown_s
            self.consecutive_failures = 0

    def set_health(self, ok: bool) -> None:
        self.healthy = ok
        if ok and self.open_until and time.monotonic() >= self.open_until:
            self.open_until = 0.0

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """One concurrency slot; waits in a bounded queue, raises QueueFull when it is full."""
        sem = self.slots
        if sem.locked():
            if self._waiting >= self.limits.max_queue_per_backend:
                raise QueueFull(self.url)
            self._waiting += 1
            try:
                await asyncio.wait_for(sem.acquire(), self.limits.queue_wait_timeout_s)
            except TimeoutError as exc:
                raise QueueFull(self.url) from exc
            finally:
                self._waiting -= 1
        else:
            await sem.acquire()
        try:
            yield
        finally:
            sem.release()


class BackendPool:
    """All backends, grouped by service; picks the least-loaded available replica, load weighted by the replica's
    planned share (`weight`)."""

    def __init__(self, by_service: dict[str, list[Backend]]) -> None:
        self.by_service = by_service
        self._tiebreak = itertools.count()

    def all(self) -> list[Backend]:
        return [b for backends in self.by_service.values() for b in backends]

    def set_urls(self, service: str, urls: list[str], make: Callable[[str], Backend]) -> tuple[list[str], list[str]]:
        """Replace the service's backends by `urls` (a backends file changed); a URL kept keeps its Backend (its
        health, breaker and outstanding count). Returns (added, removed) URLs. Requests already sent to a removed
        backend finish (or fail over) on their own; new ones no longer go there."""
        old = {b.url: b for b in self.by_service.get(service, [])}
        self.by_service[service] = [old.get(url) or make(url) for url in dict.fromkeys(urls)]
        return [u for u in urls if u not in old], [u for u in old if u not in urls]

    def pick(self, service: str, exclude: set[str]) -> Backend | None:
        """The available backend whose outstanding requests, with this one, are the smallest multiple of its weight
        ((outstanding + 1) / weight): with equal weights, least outstanding requests; with the plan's replica shares,
        in-flight requests in proportion to them (a replica sized for 2 of 16 streams gets 2 while the other has
        14). Ties rotate."""
        now = time.monotonic()
        candidates = [b for b in self.by_service.get(service, ()) if b.url not in exclude and b.available(now)]
        if not candidates:
            return None
        low = min(_load(b) for b in candidates)
        tied = [b for b in candidates if _load(b) <= low * (1 + 1e-9)]
        return tied[next(self._tiebreak) % len(tied)]

    def any_available(self, service: str) -> bool:
        now = time.monotonic()
        return any(b.available(now) for b in self.by_service.get(service, ()))


def _load(backend: Backend) -> float:
    return (backend.outstanding + 1) / backend.weight if backend.weight > 0 else float("inf")


async def check_once(session: aiohttp.ClientSession, backend: Backend) -> bool:
    timeout = aiohttp.ClientTimeout(total=backend.health.timeout_s)
    try:
        async with session.get(backend.url + backend.health.path, timeout=timeout) as resp:
            await resp.read()
            return resp.status == 200
    except (aiohttp.ClientError, TimeoutError, OSError):
        return False


async def check_all(session: aiohttp.ClientSession, pool: BackendPool) -> None:
    backends = pool.all()
    results = await asyncio.gather(*(check_once(session, b) for b in backends))
    for backend, ok in zip(backends, results, strict=True):
        backend.set_health(ok)


async def health_loop(
    session: aiohttp.ClientSession, pool: BackendPool, interval_s: float, on_checked: Callable[[], None]
) -> None:
    while True:
        await asyncio.sleep(interval_s)
        await check_all(session, pool)
        on_checked()
