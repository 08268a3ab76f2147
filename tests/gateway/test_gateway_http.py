"""The gateway as a real process in front of real (fake-model) HTTP backends: routing, streaming, limits, errors."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import aiohttp
import httpx
import pytest
from gwhelpers import Procs, make_plan, planned_service

from gpumix.netutil import free_port

KEY = "sk-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def _is_openai_error(resp: httpx.Response, status: int, code: str) -> None:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["code"] == code and err["message"] and err["type"]


@pytest.fixture(scope="module")
def stack(module_procs: Procs, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A plan with chat (2 replicas, fallback to small), small, embed and stt; API keys on; small body limit."""
    tmp = tmp_path_factory.mktemp("stack")
    chat_a, _ = module_procs.backend(name="chat-a", chunks=5, chunk_delay_ms=100)
    chat_b, _ = module_procs.backend(name="chat-b", chunks=5, chunk_delay_ms=100)
    small, _ = module_procs.backend(name="small")
    embed, _ = module_procs.backend(name="embed")
    plan = make_plan(
        planned_service("chat", "llama-3.1-8b", fallback="small", gbp_per_million_tokens=2.0),
        planned_service("small", "gemma-3-270m"),
        planned_service("embed", "bge-small", kind="embedding"),
        planned_service("stt", "whisper-small", kind="audio"),
        planned_service("broken", "m2", fallback="small"),
    )
    plan_path = tmp / "plan.json"
    plan_path.write_text(plan.model_dump_json())
    (tmp / "keys").write_text(KEY + "\n")
    log = tmp / "access.jsonl"
    dead = f"http://127.0.0.1:{free_port()}"
    url, proc = module_procs.gateway(
        "--plan", str(plan_path), "--backend", f"chat={chat_a}", "--backend", f"chat={chat_b}",
        "--backend", f"small={small}", "--backend", f"embed={embed}", "--backend", f"stt={embed}",
        "--backend", f"broken={dead}", "--api-keys-file", str(tmp / "keys"), "--access-log", str(log),
        "--max-body-mb", "0.05",
    )  # fmt: skip
    return {"url": url, "proc": proc, "chat": [chat_a, chat_b], "small": small, "log": log}


def post(stack: dict, path: str, body: object, **kw) -> httpx.Response:
    headers = {**AUTH, **kw.pop("headers", {})}
    return httpx.post(stack["url"] + path, json=body, headers=headers, timeout=10, **kw)


def test_bad_input_gets_openai_errors_and_gateway_keeps_serving(stack: dict) -> None:
    url = stack["url"] + "/v1/chat/completions"
    hdr = {**AUTH, "Content-Type": "application/json"}
    _is_openai_error(httpx.post(url, content=b'{"model": "chat", ', headers=hdr), 400, "invalid_json")
    _is_openai_error(httpx.post(url, content=b"[1, 2]", headers=hdr), 400, "invalid_json")
    _is_openai_error(httpx.post(url, content=b"model=chat", headers={**AUTH, "Content-Type": "text/plain"}), 415,
                     "unsupported_media_type")  # fmt: skip
    _is_openai_error(
        post(stack, "/v1/chat/completions", {"model": "chat", "pad": "x" * 60_000}), 413, "request_too_large"
    )
    _is_openai_error(post(stack, "/v1/chat/completions", {"model": "gpt-4o"}), 404, "model_not_found")
    _is_openai_error(post(stack, "/v1/embeddings", {"model": "chat", "input": "x"}), 400, "unsupported_endpoint")
    _is_openai_error(httpx.post(url, json={"model": "chat"}), 401, "invalid_api_key")
    _is_openai_error(httpx.post(url, json={"model": "chat"}, headers={"Authorization": "Bearer sk-wrong"}), 401,
                     "invalid_api_key")  # fmt: skip
    _is_openai_error(httpx.get(stack["url"] + "/v1/models"), 401, "invalid_api_key")
    ok = post(stack, "/v1/chat/completions", {"model": "chat", "messages": [{"role": "user", "content": "hi"}]})
    assert (
        ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == '[{"role": "user", "content": "hi"}]'
    )
    assert stack["proc"].poll() is None
    assert httpx.get(stack["url"] + "/v1/chat/completions").status_code == 405  # only the routes above


def test_routes_by_model_alias_and_endpoint(stack: dict) -> None:
    assert post(stack, "/v1/chat/completions", {"model": "llama-3.1-8b"}).json()["backend"].startswith("chat-")
    assert post(stack, "/v1/completions", {"model": "gemma-3-270m", "prompt": "x"}).json()["backend"] == "small"
    emb = post(stack, "/v1/embeddings", {"input": ["a", "b"]}).json()  # no model: the endpoint's service
    assert emb["model"] == "embed" and len(emb["data"]) == 2
    models = httpx.get(stack["url"] + "/v1/models", headers=AUTH).json()["data"]
    assert {m["id"] for m in models} == {"chat", "small", "embed", "stt", "broken"}
    assert next(m for m in models if m["id"] == "chat")["gpumix"]["fallback"] == "small"


def test_multipart_audio_passes_through(stack: dict) -> None:
    audio = bytes(range(256)) * 40  # 10 KiB of binary "audio"
    resp = httpx.post(stack["url"] + "/v1/audio/transcriptions", headers=AUTH, timeout=10,
                      files={"file": ("a.wav", audio, "audio/wav")}, data={"model": "stt"})  # fmt: skip
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"text": f"{len(audio)} bytes", "model": "stt", "backend": "embed"}
    bad = httpx.post(stack["url"] + "/v1/audio/transcriptions", headers=AUTH, json={"model": "stt"})
    _is_openai_error(bad, 415, "unsupported_media_type")


def test_dead_service_falls_back(stack: dict) -> None:
    resp = post(stack, "/v1/chat/completions", {"model": "broken", "messages": []})
    assert resp.status_code == 200 and resp.json()["backend"] == "small"


def test_stream_passes_chunk_by_chunk_and_counts_tokens(stack: dict) -> None:
    assert post(stack, "/v1/chat/completions", {"model": "no-such-model"}).status_code == 404
    arrivals: list[float] = []
    events: list[str] = []
    start = time.perf_counter()
    with httpx.stream("POST", stack["url"] + "/v1/chat/completions", headers=AUTH, timeout=10,
                      json={"model": "chat", "stream": True, "messages": []}) as resp:  # fmt: skip
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if line.startswith("data: "):
                arrivals.append(time.perf_counter() - start)
                events.append(line[6:])
    assert events[-1] == "[DONE]" and len(events) == 6
    # The backend waits 100 ms between events (500 ms in all); buffering would deliver them all at once at the end.
    assert arrivals[-1] - arrivals[0] >= 0.25
    time.sleep(1.2)  # the access log is flushed once a second
    records = [json.loads(line) for line in stack["log"].read_text().splitlines()]
    streamed = [r for r in records if r.get("stream") and r["status"] == 200]
    assert streamed and streamed[-1]["completion_tokens"] == 5 and streamed[-1]["tokens_counted"]
    assert streamed[-1]["cost_gbp"] == pytest.approx(5 * 2.0 / 1e6)
    metrics = httpx.get(stack["url"] + "/metrics").text
    assert 'gpumix_gateway_cost_gbp_total{service="chat"}' in metrics
    assert 'gpumix_gateway_requests_total{endpoint="/v1/chat/completions",service="-",status="404"}' in metrics


def test_least_outstanding_spreads_concurrent_streams(stack: dict) -> None:
    async def run() -> list[str]:
        async with aiohttp.ClientSession(headers=AUTH) as session:

            async def one() -> str:
                body = {"model": "chat", "stream": True, "messages": []}
                async with session.post(stack["url"] + "/v1/chat/completions", json=body) as resp:
                    text = await resp.text()
                    return json.loads(text.split("\n")[0][6:])["backend"]

            return await asyncio.gather(*(one() for _ in range(8)))

    backends = asyncio.run(run())
    # 8 overlapping 500 ms streams over 2 replicas: least-outstanding gives each 4.
    assert sorted(backends) == ["chat-a"] * 4 + ["chat-b"] * 4


def test_replicas_get_requests_in_proportion_to_the_plans_shares(procs: Procs, tmp_path: Path) -> None:
    """The plan sizes a fast replica for 6 of 8 streams and a slow one for 2: the real gateway keeps 6 and 2 of 8
    overlapping requests in flight on them (least outstanding would put 4 on each)."""
    fast, _ = procs.backend(name="fast", delay_ms=600)
    slow, _ = procs.backend(name="slow", delay_ms=600)
    chat = planned_service("chat", "llama-3-8b", replica_shares=[0.75, 0.25], replica_concurrency=[6, 2],
                           replica_kv_cache_tokens=[6 * 8192, 2 * 8192])  # fmt: skip
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(make_plan(chat).model_dump_json())

    async def spread(url: str) -> list[str]:
        async with aiohttp.ClientSession() as session:

            async def one() -> str:
                body = {"model": "chat", "messages": []}
                async with session.post(url + "/v1/chat/completions", json=body) as resp:
                    return (await resp.json())["backend"]

            return await asyncio.gather(*(one() for _ in range(8)))

    for balance, expected in (("shares", (6, 2)), ("least-outstanding", (4, 4))):
        url, _ = procs.gateway("--plan", str(plan_path), "--backend", f"chat={fast}", "--backend", f"chat={slow}",
                               "--balance", balance)  # fmt: skip
        backends = asyncio.run(spread(url))
        assert (backends.count("fast"), backends.count("slow")) == expected, balance


def test_client_disconnect_cancels_upstream(procs: Procs) -> None:
    backend, _ = procs.backend(chunks=200, chunk_delay_ms=20)
    url, _ = procs.gateway("--backend", f"chat={backend}")
    with httpx.stream("POST", url + "/v1/chat/completions", json={"stream": True}, timeout=10) as resp:
        for line in resp.iter_lines():
            if line.startswith("data: "):
                break  # leave after the first event of a 4 s stream
    deadline = time.monotonic() + 3
    while httpx.get(backend + "/stats").json()["streams_aborted"] != 1:
        assert time.monotonic() < deadline, "the backend kept generating after the client left"
        time.sleep(0.05)


def test_full_queue_answers_429_with_retry_after(procs: Procs) -> None:
    backend, _ = procs.backend(delay_ms=1000)
    url, _ = procs.gateway("--backend", f"chat={backend}", "--max-concurrency", "1", "--max-queue", "1")

    async def run() -> list[tuple[int, str | None]]:
        async with aiohttp.ClientSession() as session:

            async def one() -> tuple[int, str | None]:
                async with session.post(url + "/v1/chat/completions", json={"messages": []}) as resp:
                    await resp.read()
                    return resp.status, resp.headers.get("Retry-After")

            return await asyncio.gather(*(one() for _ in range(5)))

    results = asyncio.run(run())
    assert sorted(s for s, _ in results) == [200, 200, 429, 429, 429]  # one running, one waiting, three refused
    assert all(ra == "1" for s, ra in results if s == 429)


def test_first_byte_timeout_gives_503(procs: Procs) -> None:
    backend, _ = procs.backend(delay_ms=3000)
    url, _ = procs.gateway("--backend", f"chat={backend}", "--first-byte-timeout-s", "0.3", "--max-attempts", "1")
    start = time.monotonic()
    resp = httpx.post(url + "/v1/chat/completions", json={"messages": []}, timeout=10)
    assert time.monotonic() - start < 2.0
    _is_openai_error(resp, 503, "upstream_failed")


def test_gateway_refuses_bad_plan_cleanly(tmp_path: Path, procs: Procs) -> None:
    bad = tmp_path / "plan.json"
    bad.write_text('{"feasible": true}')
    _, proc = procs.gateway("--plan", str(bad), wait=False)
    assert proc.wait(20) == 2
    log = next(procs.tmp.glob("gateway-*.log")).read_text().replace("\n", " ")
    assert "is not a gpumix plan" in log and "Traceback" not in log


def test_port_in_use_is_a_clean_error(procs: Procs) -> None:
    backend, _ = procs.backend()
    url, _ = procs.gateway("--backend", f"chat={backend}")
    port = url.rsplit(":", 1)[1]
    proc = procs.start(
        [sys.executable, "-m", "gpumix", "gateway", "--port", port, "--backend", f"chat={backend}"], "dup"
    )
    assert proc.wait(30) == 2
    log = next(procs.tmp.glob("dup-*.log")).read_text().replace("\n", " ")
    assert "cannot listen on" in log and "Traceback" not in log


def test_queue_down_gives_503_not_500(procs: Procs) -> None:
    backend, _ = procs.backend()
    url, _ = procs.gateway("--backend", f"chat={backend}", "--redis", f"redis://127.0.0.1:{free_port()}/0")
    resp = httpx.post(url + "/v1/chat/completions", json={"messages": []}, headers={"Prefer": "respond-async"})
    _is_openai_error(resp, 503, "queue_unavailable")
    _is_openai_error(httpx.get(url + "/v1/jobs/abc"), 503, "queue_unavailable")
    assert httpx.post(url + "/v1/chat/completions", json={"messages": []}).status_code == 200  # still serving
