"""Fault tests with real processes: SIGKILL a replica under load, SIGKILL the only backend and bring it back."""

from __future__ import annotations

import asyncio
import collections
import json
import os
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


# ---- a backends file the gateway watches (`gpumix up --ray` rewrites it when hosts die and services move) ----
def _write_backends(path, services: dict, dead: list | None = None, weights: dict | None = None) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"services": services, "dead": dead or [], "weights": weights or {}}))
    os.replace(tmp, path)


def _backend_name(url: str) -> str:
    return httpx.post(url + "/v1/chat/completions", json={"model": "chat", "messages": []}, timeout=30).json()["backend"]


def test_the_gateway_follows_its_backends_file(procs: Procs, tmp_path) -> None:
    a_url, _ = procs.backend(name="a")
    b_url, _ = procs.backend(name="b")
    path = tmp_path / "backends.json"
    _write_backends(path, {"chat": [a_url]})
    url, _ = procs.gateway("--backend", f"chat={b_url}", "--backends-file", str(path))
    assert {_backend_name(url) for _ in range(6)} == {"a"}  # the file wins over --backend for the services it names
    _write_backends(path, {"chat": [b_url]})
    deadline = time.monotonic() + 5
    while _backend_name(url) != "b":
        assert time.monotonic() < deadline, "the gateway did not pick up the new backends file"
        time.sleep(0.1)
    assert {_backend_name(url) for _ in range(6)} == {"b"}
    health = httpx.get(url + "/health").json()["services"]["chat"]["backends"]
    assert [b["url"] for b in health] == [b_url]
    path.write_text("{ not json")  # a broken file: the gateway keeps what it has
    time.sleep(1.0)
    assert _backend_name(url) == "b"


def test_the_gateway_balances_by_the_backends_files_weights_and_follows_their_changes(procs: Procs, tmp_path) -> None:
    """`up --ray` gives each replica's streams (its -np) as weights: 8 overlapping requests go 6/2 on replicas
    weighted 6 and 2; rewritten as 2 and 6 (a stand-in sized for fewer streams took over), they go 2/6."""
    import asyncio

    import aiohttp

    fast, _ = procs.backend(name="fast", delay_ms=600)
    slow, _ = procs.backend(name="slow", delay_ms=600)
    path = tmp_path / "backends.json"
    _write_backends(path, {"chat": [fast, slow]}, weights={"chat": [6, 2]})
    url, _ = procs.gateway("--backends-file", str(path))

    async def spread() -> list[str]:
        async with aiohttp.ClientSession() as session:

            async def one() -> str:
                async with session.post(url + "/v1/chat/completions", json={"model": "chat", "messages": []}) as resp:
                    return (await resp.json())["backend"]

            return await asyncio.gather(*(one() for _ in range(8)))

    def counts() -> tuple[int, int]:
        backends = asyncio.run(spread())
        return backends.count("fast"), backends.count("slow")

    assert counts() == (6, 2)
    _write_backends(path, {"chat": [fast, slow]}, weights={"chat": [2, 6]})
    time.sleep(1.5)  # the gateway polls the file every 0.5 s
    assert counts() == (2, 6)
    _write_backends(path, {"chat": [fast, slow]}, weights={"chat": [0, 6]})  # a bad weight: the file is refused
    time.sleep(1.5)
    assert counts() == (2, 6)


def test_requests_waiting_on_a_backend_declared_dead_fail_over_at_once(procs: Procs, tmp_path) -> None:
    """A host that dies silently leaves requests hanging until a timeout; when the backends file lists the
    backend as dead, the gateway ends those waits and retries them elsewhere (nothing reached the client yet)."""
    slow_url, _ = procs.backend(name="slow", delay_ms=30000)
    fast_url, _ = procs.backend(name="fast")
    path = tmp_path / "backends.json"
    _write_backends(path, {"chat": [slow_url]})
    url, _ = procs.gateway("--backends-file", str(path))
    result: dict = {}

    def call() -> None:
        start = time.monotonic()
        reply = httpx.post(url + "/v1/chat/completions", json={"model": "chat", "messages": []}, timeout=60)
        result.update(status=reply.status_code, backend=reply.json().get("backend"), seconds=time.monotonic() - start)

    import threading

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(1.5)  # the request now waits on the slow backend
    _write_backends(path, {"chat": [fast_url]}, dead=[slow_url])
    thread.join(timeout=60)
    assert result["status"] == 200 and result["backend"] == "fast"
    assert result["seconds"] < 10, result  # not the 30 s the dead backend would have taken


def test_a_backend_that_stops_answering_connects_is_out_after_one_timeout(procs: Procs) -> None:
    """A healthy replica whose host goes silent (SYNs dropped): the first attempt waits for the connect timeout and
    is retried on the other replica; the backend is out at once, so no later request waits for it too."""
    import socket

    port = free_port()
    _gone_url, gone = procs.backend(port=port, name="gone")
    fast_url, _ = procs.backend(name="fast")
    url, _ = procs.gateway("--backend", f"chat=http://127.0.0.1:{port}", "--backend", f"chat={fast_url}",
                           "--connect-timeout-s", "0.5", "--health-interval-s", "60", "--cooldown-s", "60")  # fmt: skip
    procs.kill(gone)  # both replicas were healthy at the gateway's start; the next health check is a minute away
    hole = socket.socket()
    hole.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    hole.bind(("127.0.0.1", port))
    hole.listen(0)
    filler = socket.create_connection(("127.0.0.1", port))  # the backlog of one is full: later SYNs are dropped
    try:
        times = []
        for _ in range(8):
            start = time.monotonic()
            assert _backend_name(url) == "fast"
            times.append(time.monotonic() - start)
        assert sum(t > 0.45 for t in times) == 1, times  # exactly one request paid the connect timeout
    finally:
        filler.close()
        hole.close()
