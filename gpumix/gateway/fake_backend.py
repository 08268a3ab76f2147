"""A minimal, fast OpenAI-shaped backend for the gateway's tests and benchmarks (not a model).

Answers /v1/chat/completions and /v1/completions (JSON, or SSE when `stream` is true), /v1/embeddings,
/v1/rerank, /v1/images/generations, /v1/audio/transcriptions (multipart echo), /v1/moderations, /health.
`python -m gpumix.gateway.fake_backend --port P [--chunks N] [--chunk-delay-ms D] [--delay-ms D]`.
It counts executions per `X-Gpumix-Job-Id` header so queue tests can see duplicates (GET /stats).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os

from aiohttp import web


def make_app(
    chunks: int = 8, chunk_delay_ms: float = 0.0, delay_ms: float = 0.0, name: str = "fake"
) -> web.Application:
    executions: collections.Counter[str] = collections.Counter()
    state = {"requests": 0, "streams_aborted": 0}

    def usage(prompt: int, completion: int) -> dict:
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    async def chat(request: web.Request) -> web.StreamResponse:
        state["requests"] += 1
        body = await request.json()
        job = request.headers.get("X-Gpumix-Job-Id")
        if job:
            executions[job] += 1
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        echo = json.dumps(body.get("messages") or body.get("prompt") or "")[:200]
        if not body.get("stream"):
            return web.json_response({
                "id": "cmpl-fake", "object": "chat.completion", "model": body.get("model", name), "backend": name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": echo}, "finish_reason": "stop"}],
                "usage": usage(10, chunks),
            })  # fmt: skip
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        try:
            for i in range(chunks):
                delta = {"index": 0, "delta": {"content": f"t{i} "}, "finish_reason": None}
                event = {"id": "cmpl-fake", "object": "chat.completion.chunk", "backend": name, "choices": [delta]}
                await resp.write(b"data: " + json.dumps(event).encode() + b"\n\n")
                if chunk_delay_ms:
                    await asyncio.sleep(chunk_delay_ms / 1000)
            await resp.write(b"data: [DONE]\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            state["streams_aborted"] += 1  # the gateway closed the connection: generation stops here
            raise
        await resp.write_eof()
        return resp

    async def embeddings(request: web.Request) -> web.Response:
        state["requests"] += 1
        body = await request.json()
        inputs = body.get("input", "")
        inputs = inputs if isinstance(inputs, list) else [inputs]
        data = [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3, 0.4]} for i in range(len(inputs))]
        return web.json_response({"object": "list", "data": data, "model": name, "usage": usage(len(inputs) * 3, 0)})

    async def rerank(request: web.Request) -> web.Response:
        body = await request.json()
        docs = body.get("documents", [])
        return web.json_response(
            {"results": [{"index": i, "relevance_score": 1.0 / (i + 1)} for i in range(len(docs))]}
        )

    async def images(request: web.Request) -> web.Response:
        await request.json()
        return web.json_response({"created": 0, "data": [{"b64_json": "iVBORw0KGgo="}]})

    async def transcriptions(request: web.Request) -> web.Response:
        form = await request.post()
        upload = form.get("file")
        size = len(upload.file.read()) if upload is not None and hasattr(upload, "file") else 0
        return web.json_response({"text": f"{size} bytes", "model": form.get("model"), "backend": name})

    async def moderations(request: web.Request) -> web.Response:
        await request.json()
        return web.json_response({"id": "modr-fake", "results": [{"flagged": False}]})

    async def health(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def stats(_request: web.Request) -> web.Response:
        return web.json_response({**state, "executions": dict(executions)})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/completions", chat)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_post("/v1/rerank", rerank)
    app.router.add_post("/v1/images/generations", images)
    app.router.add_post("/v1/audio/transcriptions", transcriptions)
    app.router.add_post("/v1/moderations", moderations)
    app.router.add_get("/health", health)
    app.router.add_get("/stats", stats)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--name", default=f"fake-{os.getpid()}")
    args = parser.parse_args()
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    app = make_app(args.chunks, args.chunk_delay_ms, args.delay_ms, args.name)
    web.run_app(
        app, host=args.host, port=args.port, access_log=None, print=None, backlog=2048, handler_cancellation=True
    )


if __name__ == "__main__":
    main()
