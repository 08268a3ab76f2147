"""The gateway: an aiohttp server in front of the plan's backends, with one pooled aiohttp client session.

Request path: auth → body (size, content type, JSON) → route (model field, endpoint, pins) → optional queue
(`Prefer: respond-async`) → attempts over the service's replicas (least outstanding) and then its fallback, each
attempt retryable until the first byte has gone to the client → pass-through (streamed for SSE) → metrics + log.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import itertools
import json
import os
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from typing import TypeVar

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError
from yarl import URL

from gpumix.errors import GpumixError
from gpumix.gateway.backends import Backend, BackendPool, QueueFull, check_all, health_loop
from gpumix.gateway.config import (
    PROXIED_ENDPOINTS,
    TRANSCRIPTIONS,
    BackendsFile,
    GatewayConfig,
    HealthSettings,
    ServiceConfig,
    read_backends_file,
)
from gpumix.gateway.metrics import AccessLog, GatewayMetrics, StreamUsage, Usage, usage_from_json
from gpumix.gateway.queue import JobQueue

# Statuses that mean "this backend cannot answer now", so another replica may (llama-server answers 503 while loading).
_RETRYABLE_STATUS = frozenset({502, 503, 504})
# The `usage` object, which may hold one level of nested objects (llama-server adds "prompt_tokens_details": {...}).
_USAGE_OBJECT_RE = re.compile(rb'"usage"\s*:\s*(\{(?:[^{}]|\{[^{}]*\})*\})')
_FORWARDED_REQUEST_HEADERS = ("Content-Type", "Accept", "User-Agent")
_MAX_FALLBACK_DEPTH = 4
T = TypeVar("T")


class ApiError(Exception):
    """An OpenAI-style error answer."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.headers = status, message, type_, code, headers or {}

    def response(self) -> web.Response:
        body = {"error": {"message": self.message, "type": self.type, "param": None, "code": self.code}}
        return web.json_response(body, status=self.status, headers=self.headers)


class _Failed(Exception):
    """One attempt failed before any byte reached the client; the request may go to another backend."""


class Gateway:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.metrics = GatewayMetrics()
        self.pool = BackendPool(
            {s.name: [Backend(s.name, url, config.limits, _health_for(s, config), weight=w)
                      for url, w in zip(s.urls, s.weights or (1.0,) * len(s.urls), strict=True)]
             for s in config.services}  # fmt: skip
        )
        self._by_model: dict[str, ServiceConfig] = {}
        for svc in config.services:
            for name in svc.names():
                self._by_model.setdefault(name, svc)
        self._by_endpoint = {ep: [s for s in config.services if ep in s.endpoints] for ep in PROXIED_ENDPOINTS}
        self._api_keys = [k.encode() for k in sorted(config.api_keys)]
        lim = config.limits
        self._client_timeout = aiohttp.ClientTimeout(total=lim.total_timeout_s, sock_connect=lim.connect_timeout_s)
        self.session: aiohttp.ClientSession | None = None
        self.queue: JobQueue | None = None
        self.access_log = AccessLog(config.access_log)
        self._tasks: list[asyncio.Task] = []
        self._rid_prefix = uuid.uuid4().hex[:12] + "-"  # request ids: unique per gateway run, cheap per request
        self._rid = itertools.count(1)
        self._urls: dict[tuple[str, str], URL] = {}
        self.dashboard = None
        if config.dashboard is not None:
            from gpumix.gateway.dashboard import Dashboard

            self.dashboard = Dashboard(self, config.dashboard, self.key_matches, bool(self._api_keys))
        self.app = self._make_app()

    # ---- application wiring -------------------------------------------------------------------------------
    def _make_app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.limits.max_body_bytes)
        for endpoint in PROXIED_ENDPOINTS:
            app.router.add_post(endpoint, self.handle_proxy)
        app.router.add_get("/v1/models", self.handle_models)
        app.router.add_get("/v1/jobs/{job_id}", self.handle_job)
        app.router.add_get("/health", self.handle_health)
        app.router.add_get("/metrics", self.handle_metrics)
        if self.dashboard is not None:
            self.dashboard.add_routes(app)
        app.on_startup.append(self._startup)
        app.on_cleanup.append(self._cleanup)
        return app

    async def _startup(self, _app: web.Application) -> None:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30, enable_cleanup_closed=True)
        self.session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=self._client_timeout,
        )
        await check_all(self.session, self.pool)
        self._publish_health()
        if self.config.redis_url:
            self.queue = JobQueue(self.config.redis_url)
        self._tasks = [
            asyncio.create_task(
                health_loop(self.session, self.pool, self.config.health.interval_s, self._publish_health)
            ),
            asyncio.create_task(self._flush_loop()),
        ]
        if self.config.backends_file is not None:
            self._tasks.append(asyncio.create_task(self._watch_backends_file(self.config.backends_file)))
        if self.dashboard is not None:  # its one background sampler; nothing of it runs on the request path
            self._tasks.append(asyncio.create_task(self.dashboard.sampler.run()))

    async def _cleanup(self, _app: web.Application) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.session is not None:
            await self.session.close()
        if self.queue is not None:
            await self.queue.close()
        self.access_log.close()

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.access_log.flush()

    async def _watch_backends_file(self, path: Path) -> None:
        """Re-read the backends file when it changes (`gpumix up --ray` rewrites it when a host dies, a service
        moves or returns). A stat per poll: the request path never touches the file."""
        seen = _file_key(path)
        while True:
            await asyncio.sleep(self.config.backends_poll_s)
            key = _file_key(path)
            if key == seen:
                continue
            seen = key
            try:
                table = read_backends_file(path)
            except GpumixError as exc:
                print(f"gpumix gateway: keeping the current backends: {exc.message}", flush=True)
                continue
            self.apply_backends(table)

    def apply_backends(self, table: BackendsFile) -> None:
        """Each service named in `table` gets exactly those backend URLs (others keep theirs), weighted by the
        file's weights under `--balance shares` (equal otherwise). Requests waiting on a backend in `table.dead`
        (its host died) are failed over at once instead of waiting for a timeout."""
        dead = table.dead
        for backend in self.pool.all():
            if backend.url in dead:
                aborted = backend.abort_inflight()
                if aborted:
                    print(f"gpumix gateway: {backend.url} is dead: {aborted} request(s) retried elsewhere", flush=True)
        for svc in self.config.services:
            urls = table.services.get(svc.name)
            if urls is None:
                continue
            added, removed = self.pool.set_urls(svc.name, urls, self._backend_maker(svc))
            weights = table.weights_of(svc.name) if self.config.balance == "shares" else ()
            weight_of = dict(zip(urls, weights, strict=True)) if weights else {}
            for backend in self.pool.by_service[svc.name]:
                backend.dead = backend.dead and backend.url in dead  # listed and not dead: its host is back
                backend.weight = weight_of.get(backend.url, 1.0)
            for url in removed:
                self.metrics.forget(self.metrics.healthy, url)
            if added or removed:
                print(f"gpumix gateway: {svc.name}: backends {', '.join(urls) or 'none'}", flush=True)
        self._publish_health()

    def _backend_maker(self, svc: ServiceConfig) -> Callable[[str], Backend]:
        health = _health_for(svc, self.config)
        return lambda url: Backend(svc.name, url, self.config.limits, health)

    def _publish_health(self) -> None:
        now = time.monotonic()
        for backend in self.pool.all():
            self.metrics.child(self.metrics.healthy, backend.url).set(1 if backend.available(now) else 0)

    # ---- small handlers ------------------------------------------------------------------------------------
    async def handle_health(self, _request: web.Request) -> web.Response:
        services = {}
        now = time.monotonic()
        for svc in self.config.services:
            backends = self.pool.by_service[svc.name]
            services[svc.name] = {
                "backends": [{"url": b.url, "up": b.available(now), "outstanding": b.outstanding} for b in backends],
                "up": any(b.available(now) for b in backends),
            }
        ok = all(s["up"] for s in services.values() if s["backends"])
        return web.json_response(
            {"status": "ok" if ok else "degraded", "services": services}, status=200 if ok else 503
        )

    async def handle_metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def handle_models(self, request: web.Request) -> web.Response:
        try:
            self._check_auth(request)
        except ApiError as exc:
            return exc.response()
        data = [
            {
                "id": svc.name, "object": "model", "created": 0, "owned_by": "gpumix",
                "gpumix": {"model": svc.model_id, "aliases": list(svc.aliases), "endpoints": list(svc.endpoints),
                           "fallback": svc.fallback, "up": self.pool.any_available(svc.name)},
            }
            for svc in self.config.services
        ]  # fmt: skip
        return web.json_response({"object": "list", "data": data})

    async def handle_job(self, request: web.Request) -> web.Response:
        try:
            self._check_auth(request)
            if self.queue is None:
                raise ApiError(404, "this gateway has no job queue (start it with --redis URL)", code="no_queue")
            try:
                job = await self.queue.status(request.match_info["job_id"])
            except RedisError as exc:
                raise ApiError(503, f"the job queue is unavailable: {exc}", type_="service_unavailable",
                               code="queue_unavailable") from exc  # fmt: skip
            if job is None:
                raise ApiError(404, f"no job {request.match_info['job_id']}", code="job_not_found")
        except ApiError as exc:
            return exc.response()
        return web.json_response(job.public())

    # ---- the proxy -----------------------------------------------------------------------------------------
    async def handle_proxy(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        endpoint = request.path
        record: dict = {
            "endpoint": endpoint,
            "request_id": request.headers.get("X-Request-Id") or f"{self._rid_prefix}{next(self._rid)}",
        }
        service_name = "-"
        response: web.StreamResponse
        try:
            self._check_auth(request)
            body = await self._read_body(request)
            model, stream = self._inspect(request, endpoint, body)
            service = self._route(endpoint, model)
            service_name = service.name
            record.update(service=service.name, model=model, stream=stream)
            if self.queue is not None and "respond-async" in request.headers.get("Prefer", ""):
                response = await self._enqueue(service, endpoint, body, request)
            else:
                response = await self._forward(request, service, endpoint, body, record)
        except ApiError as exc:
            response = exc.response()
            record["error"] = exc.message
        status = response.status
        elapsed_s = time.perf_counter() - started
        self.metrics.child(self.metrics.requests, service_name, endpoint, str(status)).inc()
        self.metrics.child(self.metrics.latency, service_name, endpoint).observe(elapsed_s)
        record.update(status=status, duration_ms=round(elapsed_s * 1000, 3))
        self.access_log.write(record)
        return response

    def _check_auth(self, request: web.Request) -> None:
        if not self._api_keys:
            return
        header = request.headers.get("Authorization", "")
        given = header[7:].strip() if header[:7].lower() == "bearer " else request.headers.get("X-Api-Key", "")
        if not self.key_matches(given):
            message = "missing API key" if not given else "invalid API key"
            raise ApiError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    def key_matches(self, given: str) -> bool:
        """Constant-time check against every key, without an early exit, so timing says nothing about which key
        nearly matched."""
        given_bytes = given.encode()
        matched = False
        for key in self._api_keys:
            matched |= hmac.compare_digest(given_bytes, key)
        return matched

    async def _read_body(self, request: web.Request) -> bytes:
        limit = self.config.limits.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise ApiError(413, f"request body of {request.content_length} bytes is over the {limit}-byte limit",
                           code="request_too_large")  # fmt: skip
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge as exc:
            raise ApiError(413, f"request body is over the {limit}-byte limit", code="request_too_large") from exc

    def _inspect(self, request: web.Request, endpoint: str, body: bytes) -> tuple[str | None, bool]:
        """The request's `model` and `stream` fields, after checking the content type and the JSON."""
        if endpoint == TRANSCRIPTIONS:
            if request.content_type != "multipart/form-data":
                raise ApiError(415, f"{endpoint} takes multipart/form-data, not {request.content_type}",
                               code="unsupported_media_type")  # fmt: skip
            return _multipart_field(request.headers["Content-Type"], body, "model"), False
        if request.content_type != "application/json":
            raise ApiError(415, f"{endpoint} takes application/json, not {request.content_type}",
                           code="unsupported_media_type")  # fmt: skip
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from exc
        if not isinstance(payload, dict):
            raise ApiError(400, "request body must be a JSON object", code="invalid_json")
        model = payload.get("model")
        if model is not None and not isinstance(model, str):
            raise ApiError(400, "`model` must be a string", code="invalid_model")
        return model or None, payload.get("stream") is True

    def _route(self, endpoint: str, model: str | None) -> ServiceConfig:
        pinned = self.config.routes.get(endpoint)
        if pinned is not None:
            return self.config.service(pinned)
        if model:
            svc = self._by_model.get(model)
            if svc is None:
                known = ", ".join(sorted(s.name for s in self._by_endpoint[endpoint])) or "none"
                raise ApiError(404, f"The model `{model}` does not exist (models for {endpoint}: {known})",
                               code="model_not_found")  # fmt: skip
            if endpoint not in svc.endpoints:
                raise ApiError(400, f"model `{model}` (service {svc.name}) does not serve {endpoint}",
                               code="unsupported_endpoint")  # fmt: skip
            return svc
        candidates = self._by_endpoint[endpoint]
        if not candidates:
            raise ApiError(404, f"no service serves {endpoint}", code="endpoint_not_served")
        return candidates[0]

    def _chain(self, service: ServiceConfig) -> list[ServiceConfig]:
        chain = [service]
        while chain[-1].fallback and len(chain) < _MAX_FALLBACK_DEPTH:
            nxt = self.config.service(chain[-1].fallback)
            if nxt in chain:
                break
            chain.append(nxt)
        return chain

    async def _enqueue(self, service: ServiceConfig, endpoint: str, body: bytes, request: web.Request) -> web.Response:
        assert self.queue is not None
        if endpoint == TRANSCRIPTIONS:
            raise ApiError(400, "multipart requests cannot be queued; send them without Prefer: respond-async")
        try:
            job_id, _created = await self.queue.submit(
                service.name, endpoint, json.loads(body), idempotency_key=request.headers.get("Idempotency-Key")
            )
        except RedisError as exc:
            raise ApiError(503, f"the job queue is unavailable: {exc}", type_="service_unavailable",
                           code="queue_unavailable") from exc  # fmt: skip
        headers = {"Location": f"/v1/jobs/{job_id}", "Preference-Applied": "respond-async"}
        return web.json_response({"id": job_id, "object": "job", "status": "queued"}, status=202, headers=headers)

    async def _forward(self, request: web.Request, service: ServiceConfig, endpoint: str, body: bytes,
                       record: dict) -> web.StreamResponse:  # fmt: skip
        headers = {h: request.headers[h] for h in _FORWARDED_REQUEST_HEADERS if h in request.headers}
        headers["X-Request-Id"] = record["request_id"]
        tried: set[str] = set()
        attempts = 0
        errors: list[str] = []
        for svc in self._chain(service):
            while attempts < self.config.limits.max_attempts:
                backend = self.pool.pick(svc.name, tried)
                if backend is None:
                    break
                if attempts:
                    self.metrics.child(self.metrics.retries, service.name).inc()
                attempts += 1
                tried.add(backend.url)
                try:
                    response = await self._attempt(request, backend, svc, endpoint, body, headers, record)
                except _Failed as exc:
                    errors.append(f"{backend.url}: {exc}")
                    self.metrics.child(self.metrics.upstream_failures, backend.url).inc()
                    self._publish_health()
                    continue
                record.update(backend=backend.url, attempts=attempts)
                if svc is not service:
                    record["fallback"] = svc.name
                return response
        record["attempts"] = attempts
        if not errors:
            raise ApiError(503, f"no healthy backend for service {service.name}", type_="service_unavailable",
                           code="no_healthy_backend", headers={"Retry-After": "1"})  # fmt: skip
        raise ApiError(503, f"all backends failed for service {service.name}: {'; '.join(errors)}",
                       type_="service_unavailable", code="upstream_failed", headers={"Retry-After": "1"})  # fmt: skip

    async def _attempt(self, request: web.Request, backend: Backend, svc: ServiceConfig, endpoint: str, body: bytes,
                       headers: dict[str, str], record: dict) -> web.StreamResponse:  # fmt: skip
        backend.outstanding += 1
        gauge = self.metrics.child(self.metrics.outstanding, backend.url)
        gauge.inc()
        try:
            async with backend.slot():
                return await self._exchange(request, backend, svc, endpoint, body, headers, record)
        except QueueFull as exc:
            raise ApiError(429, f"backend {backend.url} of service {svc.name} is at its concurrency and queue limit",
                           type_="rate_limit_exceeded", code="queue_full", headers={"Retry-After": "1"}) from exc  # fmt: skip
        finally:
            backend.outstanding -= 1
            gauge.dec()

    def _upstream_url(self, backend: Backend, endpoint: str) -> URL:
        """Parsed once per (backend, endpoint): URL parsing is a visible share of a proxied request's CPU."""
        key = (backend.url, endpoint)
        url = self._urls.get(key)
        if url is None:
            url = self._urls[key] = URL(backend.url + endpoint)
        return url

    async def _exchange(self, request: web.Request, backend: Backend, svc: ServiceConfig, endpoint: str, body: bytes,
                        headers: dict[str, str], record: dict) -> web.StreamResponse:  # fmt: skip
        try:
            async with asyncio.timeout(self.config.limits.first_byte_timeout_s) as scope:
                assert self.session is not None, "requests are served only after _startup opened the session"
                backend.inflight.add(scope)  # abort_inflight() ends the wait when the backend's host is dead
                try:
                    upstream = await self.session.post(
                        self._upstream_url(backend, endpoint), data=body, headers=headers
                    )
                finally:
                    backend.inflight.discard(scope)
        except aiohttp.ClientConnectorError as exc:
            backend.record_failure(hard=True)
            raise _Failed(f"connect: {exc.os_error or exc}") from exc
        except aiohttp.ConnectionTimeoutError as exc:
            # No answer to the connection at all (a dead or cut-off host): out at once, like a refused connection,
            # so the next requests do not each wait for the connect timeout.
            backend.record_failure(hard=True)
            raise _Failed("connect: timed out") from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            backend.record_failure(hard=backend.dead)
            raise _Failed("its host is dead" if backend.dead else f"{type(exc).__name__} before the response headers") from exc
        try:
            if upstream.status in _RETRYABLE_STATUS:
                backend.record_failure()
                raise _Failed(f"HTTP {upstream.status}")
            if upstream.content_type == "text/event-stream":
                return await self._stream(request, upstream, backend, svc, record)
            try:
                data = await _abortable(backend, upstream.read())
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                backend.record_failure()
                raise _Failed(f"{type(exc).__name__} while reading the body") from exc
        finally:
            upstream.release()
        backend.record_success()
        if upstream.status == 200:
            match = _USAGE_OBJECT_RE.search(data)
            if match is not None:
                with contextlib.suppress(ValueError):
                    self._account(svc, usage_from_json({"usage": json.loads(match.group(1))}), record)
        return web.Response(body=data, status=upstream.status, headers={"Content-Type": upstream.headers.get(
            "Content-Type", "application/json")})  # fmt: skip

    async def _stream(self, request: web.Request, upstream: aiohttp.ClientResponse, backend: Backend,
                      svc: ServiceConfig, record: dict) -> web.StreamResponse:  # fmt: skip
        """Pass SSE through chunk by chunk. The first chunk is read before answering, so a backend that dies
        before producing anything can still be retried elsewhere."""
        counter = StreamUsage()
        try:
            first = await _abortable(backend, upstream.content.readany())
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            backend.record_failure()
            upstream.close()
            raise _Failed(f"{type(exc).__name__} before the first event") from exc
        if not first:
            backend.record_failure()
            raise _Failed("stream ended before the first event")
        backend.record_success()
        response = web.StreamResponse(status=upstream.status, headers={
            "Content-Type": upstream.headers.get("Content-Type", "text/event-stream"),
            "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # fmt: skip
        await response.prepare(request)
        chunk = first
        try:
            while chunk:
                counter.feed(chunk)
                await response.write(chunk)
                chunk = await upstream.content.readany()
        except (ConnectionResetError, asyncio.CancelledError):
            # The client went away: closing the upstream connection makes the backend stop generating.
            upstream.close()
            record["client_disconnected"] = True
            self._account(svc, counter.usage(), record)
            raise
        except (aiohttp.ClientError, TimeoutError, OSError):
            # The backend died mid-stream: too late to retry; end the stream short so the client sees it.
            upstream.close()
            record["upstream_broken"] = True
            backend.record_failure()
            self._account(svc, counter.usage(), record)
            return response
        self._account(svc, counter.usage(), record)
        await response.write_eof()
        return response

    def _account(self, svc: ServiceConfig, usage: Usage | None, record: dict) -> None:
        if usage is None:
            return
        record.update(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens)
        if usage.counted:
            record["tokens_counted"] = True
        self.metrics.child(self.metrics.tokens, svc.name, "prompt").inc(usage.prompt_tokens)
        self.metrics.child(self.metrics.tokens, svc.name, "completion").inc(usage.completion_tokens)
        if svc.gbp_per_million_tokens is not None:
            cost_gbp = usage.total_tokens * svc.gbp_per_million_tokens / 1e6
            record["cost_gbp"] = round(cost_gbp, 9)
            self.metrics.child(self.metrics.cost, svc.name).inc(cost_gbp)


async def _abortable(backend: Backend, awaitable: Awaitable[T]) -> T:
    """Await, unless the backend is declared dead meanwhile (then TimeoutError: the attempt fails over)."""
    async with asyncio.timeout(None) as scope:
        backend.inflight.add(scope)
        try:
            return await awaitable
        finally:
            backend.inflight.discard(scope)


def _file_key(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def _health_for(service: ServiceConfig, config: GatewayConfig) -> HealthSettings:
    if service.health_path is None or service.health_path == config.health.path:
        return config.health
    return dataclasses.replace(config.health, path=service.health_path)


def _multipart_field(content_type: str, body: bytes, name: str) -> str | None:
    """One text field of a multipart/form-data body (the stdlib MIME parser, not a hand-written one)."""
    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    if not message.is_multipart():
        raise ApiError(400, "malformed multipart/form-data body", code="invalid_multipart")
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == name:
            payload = part.get_payload(decode=True)
            return payload.decode(errors="replace").strip() if isinstance(payload, bytes) and payload else None
    return None


LOOP_ENV = "GPUMIX_GATEWAY_LOOP"  # "uvloop" (default when installed) or "asyncio"


def _use_uvloop() -> None:
    if os.environ.get(LOOP_ENV, "uvloop") != "uvloop":
        return
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def start(gateway: Gateway, host: str, port: int) -> web.AppRunner:
    """Start serving; the caller owns the runner (`await runner.cleanup()`)."""
    runner = web.AppRunner(gateway.app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=2048, reuse_address=True)
    await site.start()
    return runner


def serve(gateway: Gateway, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Run until interrupted (SIGINT/SIGTERM)."""
    _use_uvloop()
    print(f"gpumix gateway listening on http://{host}:{port} ({len(gateway.config.services)} services)", flush=True)
    try:
        web.run_app(gateway.app, host=host, port=port, handler_cancellation=True, access_log=None, print=None,
                    backlog=2048)  # fmt: skip
    except OSError as exc:
        raise GpumixError(f"the gateway cannot listen on {host}:{port}: {exc.strerror or exc}",
                          hint="pick a free --port, or stop what is using it") from exc  # fmt: skip
