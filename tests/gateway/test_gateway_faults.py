"""Fault tests with real processes: SIGKILL a replica under load, SIGKILL the only backend and bring it back."""

from __future__ import annotations

import asyncio
import collections
import time

import aiohttp
import httpx
from gwhelpers import Procs, wait_http

from gpumix.netutil import free_port


async def steady_load(url: str, rate_per_s: float, duration_s: float, on_tick=None) -> collections.Counter:
    """Open-loop load: one request every 1/rate seconds, whatever the answers; counts statuses (or error names)."""
    statuses: collections.Counter = collections.Counter()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:

        async def one() -> None:
            try:
                async with session.post(url + "/v1/chat/completions", json={"model": "chat", "messages": []}) as r:
                    await r.read()
                    statuses[r.status] += 1
            except aiohttp.ClientError as exc:
                statuses[type(exc).__name__] += 1

        tasks = []
        start = time.monotonic()
        n = int(rate_per_s * duration_s)
        for i in range(n):
            await asyncio.sleep(max(0.0, start + i / rate_per_s - time.monotonic()))
            if on_tick is not None:
                on_tick(time.monotonic() - start)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    return statuses


def test_sigkill_one_of_two_replicas_under_load_fails_no_request(procs: Procs) -> None:
    a_url, a_proc = procs.backend(name="a", delay_ms=20)
    b_url, _ = procs.backend(name="b", delay_ms=20)
    url, _ = procs.gateway("--backend", f"chat={a_url}", "--backend", f"chat={b_url}", "--health-interval-s", "0.5")
    killed = {}

    def kill_a_at_1s(t: float) -> None:
        if t >= 1.0 and not killed:
            killed["requests_before"] = httpx.get(a_url + "/stats").json()["requests"]
            procs.kill(a_proc)
            killed["at"] = t

    statuses = asyncio.run(steady_load(url, rate_per_s=100, duration_s=3.0, on_tick=kill_a_at_1s))
    assert killed and killed["requests_before"] > 20  # replica a was taking its share when it died
    assert statuses == {200: 300}, statuses
    metrics = httpx.get(url + "/metrics").text
    assert f'gpumix_gateway_backend_up{{backend="{a_url}"}} 0.0' in metrics


def test_sigkill_only_backend_gives_fast_503_then_recovers(procs: Procs) -> None:
    port = free_port()
    backend, proc = procs.backend(port=port)
    url, _ = procs.gateway("--backend", f"chat={backend}", "--health-interval-s", "0.3", "--cooldown-s", "1",
                           "--connect-timeout-s", "1")  # fmt: skip
    body = {"messages": []}
    assert httpx.post(url + "/v1/chat/completions", json=body).status_code == 200
    procs.kill(proc)
    for _ in range(5):
        start = time.monotonic()
        resp = httpx.post(url + "/v1/chat/completions", json=body, timeout=10)
        assert time.monotonic() - start < 2.5  # within the 1 s connect timeout (plus a loaded box), no hang
        assert resp.status_code == 503 and resp.headers["Retry-After"] == "1"
        assert resp.json()["error"]["code"] in ("no_healthy_backend", "upstream_failed")
    assert httpx.get(url + "/health").status_code == 503
    procs.backend(port=port)  # the same backend comes back on the same port
    deadline = time.monotonic() + 5
    while httpx.post(url + "/v1/chat/completions", json=body).status_code != 200:
        assert time.monotonic() < deadline, "gateway did not put the backend back"
        time.sleep(0.1)
    wait_http(url + "/health", timeout_s=2)
