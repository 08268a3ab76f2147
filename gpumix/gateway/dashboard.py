"""The live dashboard the gateway serves at /ui, fed by /api/status (JSON) and /api/events (server-sent events).

One background sampler task per gateway does all the work, every `interval_s`: it reads the gateway's own
Prometheus counters and histogram (requests, latency, tokens, £), its backends' health and outstanding requests,
and — under `gpumix up` — the supervisor's state.json, the processes' RSS/CPU and the cards (NVML), through the
same functions as `gpumix status`. The blocking part runs in a worker thread, so the event loop that proxies
requests only ever pays for handing a finished snapshot to the open event streams. Nothing is added to the
request path: the proxy already updates the counters the sampler reads.

When the gateway has API keys, the page and its data need one: `/ui` shows a login form, a correct key (compared
in constant time) gets an HttpOnly, SameSite=Strict session cookie; API clients may send the key as a bearer
token instead. Keys never appear in URLs or logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from gpumix.gateway.backends import BackendPool
from gpumix.gateway.config import DashboardSettings, GatewayConfig
from gpumix.gateway.metrics import GatewayMetrics
from gpumix.report import plan_fields as pf

SECONDS_PER_MONTH = 365.25 / 12 * 86400  # the average Gregorian month
RATE_WINDOW_S = 10.0  # requests/s and tokens/s are averaged over this window
LATENCY_WINDOW_S = 60.0  # p50/p99 over the requests that finished in this window
SESSION_COOKIE = "gpumix_ui"
SESSION_TTL_S = 12 * 3600
MAX_SESSIONS = 1000
MAX_SUBSCRIBERS = 64
SSE_PING_S = 15.0
MAX_LOGIN_BYTES = 4096

_CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self'; "
        "img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")  # fmt: skip
_PAGE_HEADERS = {"Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                 "Cache-Control": "no-store", "X-Frame-Options": "DENY"}  # fmt: skip


class Gateway(Protocol):
    """What the dashboard reads of the gateway (gpumix.gateway.server.Gateway, which imports this module)."""

    config: GatewayConfig
    metrics: GatewayMetrics
    pool: BackendPool


# ---- counters ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Counters:
    """Cumulative values read from the gateway's Prometheus registry at one moment."""

    ts: float
    requests: dict[str, float]  # per service
    errors: dict[str, float]  # per service, status >= 500
    tokens: dict[str, float]  # completion tokens per service
    cost_gbp: dict[str, float]
    buckets: dict[str, list[tuple[float, float]]]  # per service: (le, cumulative count)


def read_counters(registry: Any) -> Counters:
    requests: dict[str, float] = {}
    errors: dict[str, float] = {}
    tokens: dict[str, float] = {}
    cost: dict[str, float] = {}
    buckets: dict[str, dict[float, float]] = {}
    for metric in registry.collect():
        for s in metric.samples:
            svc = s.labels.get("service", "-")
            if s.name == "gpumix_gateway_requests_total":
                requests[svc] = requests.get(svc, 0.0) + s.value
                if s.labels.get("status", "").startswith("5"):
                    errors[svc] = errors.get(svc, 0.0) + s.value
            elif s.name == "gpumix_gateway_tokens_total" and s.labels.get("kind") == "completion":
                tokens[svc] = tokens.get(svc, 0.0) + s.value
            elif s.name == "gpumix_gateway_cost_gbp_total":
                cost[svc] = cost.get(svc, 0.0) + s.value
            elif s.name == "gpumix_gateway_request_seconds_bucket":
                le = float(s.labels["le"])
                per = buckets.setdefault(svc, {})
                per[le] = per.get(le, 0.0) + s.value  # summed over endpoints
    return Counters(time.time(), requests, errors, tokens, cost,
                    {k: sorted(v.items()) for k, v in buckets.items()})  # fmt: skip


def quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """The q-quantile of a cumulative histogram, interpolated linearly inside its bucket (as Prometheus'
    histogram_quantile does); None without observations."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    target = q * buckets[-1][1]
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= target:
            if le == float("inf"):
                return prev_le
            share = (target - prev_count) / (count - prev_count) if count > prev_count else 1.0
            return prev_le + (le - prev_le) * share
        prev_le, prev_count = le, count
    return prev_le


def _diff_buckets(now: list[tuple[float, float]], then: list[tuple[float, float]]) -> list[tuple[float, float]]:
    old = dict(then)
    return [(le, count - old.get(le, 0.0)) for le, count in now]


def _merge_buckets(per_service: dict[str, list[tuple[float, float]]]) -> list[tuple[float, float]]:
    merged: dict[float, float] = {}
    for buckets in per_service.values():
        for le, count in buckets:
            merged[le] = merged.get(le, 0.0) + count
    return sorted(merged.items())


# ---- the sampler ------------------------------------------------------------------------------------------------
class Sampler:
    """Samples every `interval_s`, keeps the history, and hands each snapshot to the open event streams."""

    def __init__(self, gateway: Gateway, settings: DashboardSettings) -> None:
        self.gateway = gateway
        self.settings = settings
        self.plan_doc: pf.Doc | None = gateway.config.plan.model_dump(mode="json") if gateway.config.plan else None
        self.started_at = time.time()
        self.latest_text: str | None = None  # the newest snapshot, JSON
        self.history_text = "[]"  # the history, JSON (encoded by the sampler thread, not per request)
        points = max(int(settings.history_s / settings.interval_s), 2)
        self.history: deque[dict[str, Any]] = deque(maxlen=points)
        self._counters: deque[Counters] = deque(maxlen=max(int(LATENCY_WINDOW_S / settings.interval_s) + 2, 4))
        self.subscribers: set[asyncio.Queue[str | None]] = set()
        self.samples = 0

    async def run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                snapshot_text = await asyncio.to_thread(self.sample_encoded)
            except Exception as exc:  # noqa: BLE001 - the page must keep working; say what broke instead
                snapshot_text = json.dumps({"ts": time.time(), "error": f"sampler: {type(exc).__name__}: {exc}"})
            self.publish(snapshot_text)
            await asyncio.sleep(max(self.settings.interval_s - (time.monotonic() - started), 0.05))

    def sample_encoded(self) -> str:
        """One sample, added to the history, both already JSON: the event loop only hands out finished text."""
        snapshot = self.sample()
        self.history.append(_history_point(snapshot))
        self.history_text = json.dumps(list(self.history), separators=(",", ":"))
        return json.dumps(snapshot, separators=(",", ":"))

    def publish(self, snapshot_text: str) -> None:
        self.latest_text = snapshot_text
        for queue in list(self.subscribers):
            if queue.full():  # a slow reader gets the newest snapshot, not a backlog
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(snapshot_text)

    def close_streams(self) -> None:
        for queue in list(self.subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)

    # -- one sample (worker thread) --
    def sample(self) -> dict[str, Any]:
        now = time.time()
        counters = read_counters(self.gateway.metrics.registry)
        self._counters.append(counters)
        self.samples += 1
        run = _supervised(self.settings.run_dir, self.gateway.config.plan)
        services = self._services(counters, run)
        devices, advice = _devices(self.gateway.config.plan, self.plan_doc, run)
        totals = self._totals(counters, services)
        return {
            "ts": now,
            "interval_s": self.settings.interval_s,
            "uptime_s": now - self.started_at,
            "plan": _plan_summary(self.plan_doc),
            "supervisor": run.summary if run else None,
            "devices": devices,
            "services": services,
            "totals": totals,
            "cost": self._cost(counters, totals, run),
            "advice": advice,
        }

    def _window(self, seconds: float) -> Counters | None:
        """The oldest kept sample no older than `seconds` (None on the first sample)."""
        if len(self._counters) < 2:
            return None
        newest = self._counters[-1].ts
        candidates = [c for c in list(self._counters)[:-1] if newest - c.ts <= seconds + self.settings.interval_s / 2]
        return candidates[0] if candidates else self._counters[-2]

    def _rates(self, counters: Counters, field: str, service: str | None) -> float | None:
        then = self._window(RATE_WINDOW_S)
        if then is None or counters.ts <= then.ts:
            return None
        now_v, then_v = getattr(counters, field), getattr(then, field)
        keys = [service] if service else set(now_v) | set(then_v)
        delta = sum(now_v.get(k, 0.0) - then_v.get(k, 0.0) for k in keys)
        return max(delta, 0.0) / (counters.ts - then.ts)

    def _latency_ms(self, counters: Counters, service: str | None) -> tuple[float | None, float | None]:
        then = self._window(LATENCY_WINDOW_S)
        now_b = counters.buckets.get(service, []) if service else _merge_buckets(counters.buckets)
        then_b = (then.buckets.get(service, []) if service else _merge_buckets(then.buckets)) if then else []
        window = _diff_buckets(now_b, then_b)
        p50, p99 = quantile(window, 0.5), quantile(window, 0.99)
        return (None if p50 is None else p50 * 1000, None if p99 is None else p99 * 1000)

    def _services(self, counters: Counters, run: _Run | None) -> list[dict[str, Any]]:
        pool = self.gateway.pool
        now = time.monotonic()
        planned = {s["name"]: s for s in pf.services(self.plan_doc)} if self.plan_doc else {}
        out = []
        for cfg in self.gateway.config.services:
            backends: list[dict[str, Any]] = [{"url": b.url, "up": b.available(now), "outstanding": b.outstanding}
                                              for b in pool.by_service.get(cfg.name, [])]  # fmt: skip
            procs = [p for p in run.processes if p["service"] == cfg.name] if run else []
            p50, p99 = self._latency_ms(counters, cfg.name)
            svc = planned.get(cfg.name)
            out.append({
                "name": cfg.name,
                "health": _health(backends, procs),
                "backends": backends,
                "processes": procs,
                "restarts": sum(p["restarts"] for p in procs),
                "uptime_s": min((p["uptime_s"] for p in procs if p["uptime_s"] is not None), default=None),
                "requests_per_s": self._rates(counters, "requests", cfg.name),
                "errors_per_s": self._rates(counters, "errors", cfg.name),
                "tokens_per_s": self._rates(counters, "tokens", cfg.name),
                "predicted_tokens_per_s": pf.llm_speed(svc) if svc else None,
                "p50_ms": p50, "p99_ms": p99,
                "outstanding": sum(b["outstanding"] for b in backends),
                "requests_total": counters.requests.get(cfg.name, 0.0),
                "devices": pf.service_device_ids(self.plan_doc, svc) if svc and self.plan_doc else [],
            })  # fmt: skip
        return out

    def _totals(self, counters: Counters, services: list[dict[str, Any]]) -> dict[str, Any]:
        p50, p99 = self._latency_ms(counters, None)
        predicted = [s["predicted_tokens_per_s"] for s in services if s["predicted_tokens_per_s"]]
        return {
            "requests_per_s": self._rates(counters, "requests", None),
            "errors_per_s": self._rates(counters, "errors", None),
            "tokens_per_s": self._rates(counters, "tokens", None),
            "predicted_tokens_per_s": sum(predicted) if predicted else None,
            "p50_ms": p50, "p99_ms": p99,
            "outstanding": sum(s["outstanding"] for s in services),
            "requests_total": sum(counters.requests.values()),
            "healthy": sum(s["health"] == "healthy" for s in services),
            "services": len(services),
        }  # fmt: skip

    def _cost(self, counters: Counters, totals: dict[str, Any], run: _Run | None) -> dict[str, Any]:
        summary = pf.summary(self.plan_doc) if self.plan_doc else {}
        per_month = summary.get("gbp_per_month")
        since = run.started_at if run else self.started_at
        rent = None if per_month is None else per_month * (time.time() - since) / SECONDS_PER_MONTH
        tokens = sum(counters.tokens.values())
        return {
            "gbp_per_month": per_month,
            "since": since,
            "rent_so_far_gbp": rent,
            "tokens_value_gbp": sum(counters.cost_gbp.values()),  # tokens served × the plan's £/M tokens
            "completion_tokens": tokens,
            "planned_gbp_per_million_tokens": summary.get("gbp_per_million_tokens"),
            "actual_gbp_per_million_tokens": rent / tokens * 1e6 if rent is not None and tokens else None,
        }


def _history_point(s: dict[str, Any]) -> dict[str, Any]:
    t = s["totals"]
    return {
        "ts": round(s["ts"], 2),
        "rps": t["requests_per_s"], "p50": t["p50_ms"], "p99": t["p99_ms"], "tps": t["tokens_per_s"],
        "out": t["outstanding"], "healthy": t["healthy"],
        "mem": {d["id"]: d["memory_used_bytes"] for d in s["devices"]},
        "util": {d["id"]: d["utilisation_pct"] for d in s["devices"]},
    }  # fmt: skip


def _health(backends: list[dict[str, Any]], procs: list[dict[str, Any]]) -> str:
    """healthy: every process healthy and the gateway reaches a backend; degraded: some replica down; else the
    worst state seen (starting, backoff, unhealthy, ...)."""
    up = [b["up"] for b in backends]
    states = [p["state"] for p in procs]
    if states and any(s != "healthy" for s in states):
        if any(up) and any(s == "healthy" for s in states):
            return "degraded"
        bad = [s for s in states if s != "healthy"]
        return "unhealthy" if "unhealthy" in bad or "failed" in bad else bad[0]
    if not up:
        return "no backend"
    if all(up):
        return "healthy"
    return "degraded" if any(up) else "unhealthy"


def _plan_summary(doc: pf.Doc | None) -> dict[str, Any] | None:
    if doc is None:
        return None
    s = pf.summary(doc)
    return {"source": s["source"], "feasible": s["feasible"], "gbp_per_month": s["gbp_per_month"],
            "gbp_per_million_tokens": s["gbp_per_million_tokens"], "calibration": s["calibration"],
            "devices": len(pf.devices(doc)), "services": len(pf.services(doc))}  # fmt: skip


# ---- the supervisor's view (gpumix status's functions) ------------------------------------------------------------
@dataclass
class _Run:
    summary: dict[str, Any]
    started_at: float
    processes: list[dict[str, Any]]
    state: Any  # gpumix.run.state.RunState
    reports: list[Any]  # gpumix.run.status.ProcessReport


def _supervised(run_dir: Path | None, plan: Any) -> _Run | None:
    if run_dir is None:
        return None
    from gpumix.run.state import read_state
    from gpumix.run.status import process_reports
    from gpumix.run.up import supervisor_alive

    try:
        state = read_state(run_dir)
    except (OSError, ValueError):
        return None
    if state is None:
        return None
    engines = [p for p in state.processes if p.kind == "engine"]
    engine_state = state.model_copy(update={"processes": engines})
    reports = process_reports(engine_state, sample_s=0.1)
    procs = [{
        "name": r.name, "service": r.service, "state": r.state, "pid": r.pid, "port": r.port, "restarts": r.restarts,
        "uptime_s": r.uptime_s, "probe": r.health, "rss_bytes": r.rss_bytes, "cpu_pct": r.cpu_pct,
        "last_error": p.last_error,
    } for r, p in zip(reports, engines, strict=True)]  # fmt: skip
    summary = {"run_dir": str(run_dir), "supervisor_pid": state.supervisor_pid, "running": supervisor_alive(state),
               "message": state.message, "started_at": state.started_at}  # fmt: skip
    return _Run(summary, state.started_at, procs, engine_state, reports)


def _devices(plan: Any, doc: pf.Doc | None, run: _Run | None) -> tuple[list[dict[str, Any]], list[str]]:
    """Per card of the plan: used (NVML; the RSS of the processes on a CPU device) vs planned vs total, and the
    imbalance advice of `gpumix status`. Only the run host's devices are read (by device id); another host's
    cards show their plan with `source` saying where they are."""
    if plan is None or doc is None:
        return [], []
    from gpumix.run.gpuinfo import read_gpus
    from gpumix.run.state import RunState
    from gpumix.run.status import device_reports, imbalance_advice

    # without a run dir, only a one-machine plan's cards are known to be this machine's
    state = run.state if run else RunState(supervisor_pid=0, started_at=0.0, plan_path="", processes=[])
    reports = device_reports(plan, run.reports if run else [], state, read_gpus())
    by_id = {rep.id: rep for rep in reports}
    out = []
    for dev in pf.devices(doc):
        mem = pf.device_memory(dev)
        rep = by_id.get(pf.device_id(dev))
        if rep is not None and run is None and rep.kind == "cpu":  # no processes known: nothing to sum
            rep = dataclasses.replace(rep, memory_used_bytes=None, utilisation_pct=None,
                                      source="unavailable (no --run-dir)")  # fmt: skip
        out.append({
            "id": pf.device_id(dev), "name": dev.get("name"), "kind": dev.get("kind"),
            "memory_used_bytes": rep.memory_used_bytes if rep else None, "memory_planned_bytes": mem["planned"],
            "memory_total_bytes": (rep.memory_total_bytes if rep else None) or mem["total"],
            "utilisation_pct": rep.utilisation_pct if rep else None,
            "source": rep.source if rep else _elsewhere(dev, run),
        })  # fmt: skip
    return out, imbalance_advice(plan, reports)


def _elsewhere(dev: pf.Doc, run: _Run | None) -> str:
    if run is None:
        return "unavailable (a multi-host plan: --run-dir says which host this is)"
    return f"on host {dev.get('host')} (read there)"


# ---- HTTP: pages, data, auth --------------------------------------------------------------------------------------
def _asset(name: str) -> str:
    return resources.files("gpumix.gateway").joinpath(f"data/{name}").read_text(encoding="utf-8")


class Dashboard:
    """Routes /ui, /ui/app.js, /ui/login, /ui/logout, /api/status, /api/events on the gateway's app."""

    def __init__(self, gateway: Gateway, settings: DashboardSettings, key_matches: Callable[[str], bool],
                 keys_required: bool) -> None:  # fmt: skip
        self.sampler = Sampler(gateway, settings)
        self._key_matches = key_matches
        self._keys_required = keys_required
        self._sessions: dict[str, float] = {}  # sha256(token) → expiry (monotonic)
        self._page = _asset("dashboard.html")
        self._login = _asset("login.html")
        self._script = _asset("dashboard.js")

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/ui", self.handle_page)
        app.router.add_get("/ui/", self.handle_page)
        app.router.add_get("/ui/app.js", self.handle_script)
        app.router.add_post("/ui/login", self.handle_login)
        app.router.add_post("/ui/logout", self.handle_logout)
        app.router.add_get("/api/status", self.handle_status)
        app.router.add_get("/api/events", self.handle_events)
        app.on_shutdown.append(self._on_shutdown)

    async def _on_shutdown(self, _app: web.Application) -> None:
        self.sampler.close_streams()  # open event streams end now instead of holding the shutdown

    # -- auth --
    def _authorised(self, request: web.Request) -> bool:
        if not self._keys_required:
            return True
        token = request.cookies.get(SESSION_COOKIE)
        if token:
            expiry = self._sessions.get(hashlib.sha256(token.encode()).hexdigest())
            if expiry is not None and expiry > time.monotonic():
                return True
        header = request.headers.get("Authorization", "")
        given = header[7:].strip() if header[:7].lower() == "bearer " else request.headers.get("X-Api-Key", "")
        return bool(given) and self._key_matches(given)

    def _new_session(self) -> str:
        now = time.monotonic()
        for digest in [d for d, exp in self._sessions.items() if exp <= now]:
            del self._sessions[digest]
        while len(self._sessions) >= MAX_SESSIONS:
            del self._sessions[next(iter(self._sessions))]
        token = secrets.token_urlsafe(32)
        self._sessions[hashlib.sha256(token.encode()).hexdigest()] = now + SESSION_TTL_S
        return token

    def _login_page(self, message: str = "", status: int = 200) -> web.Response:
        text = self._login.replace("{{message}}", message)
        return web.Response(text=text, content_type="text/html", status=status, headers=_PAGE_HEADERS)

    async def handle_page(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return self._login_page()
        return web.Response(text=self._page, content_type="text/html", headers=_PAGE_HEADERS)

    async def handle_script(self, _request: web.Request) -> web.Response:
        return web.Response(text=self._script, content_type="application/javascript", headers=_PAGE_HEADERS)

    async def handle_login(self, request: web.Request) -> web.Response:
        if not self._keys_required:
            raise web.HTTPSeeOther("/ui")
        if request.content_length is None or request.content_length > MAX_LOGIN_BYTES:
            return self._login_page("The form is too large.", 413)
        form = await request.post()
        key = form.get("key")
        if not isinstance(key, str) or not key or not self._key_matches(key):
            return self._login_page("That key is not valid.", 401)
        response = web.HTTPSeeOther("/ui")
        response.set_cookie(SESSION_COOKIE, self._new_session(), max_age=SESSION_TTL_S, httponly=True,
                            samesite="Strict", path="/", secure=request.secure)  # fmt: skip
        raise response

    async def handle_logout(self, request: web.Request) -> web.Response:
        token = request.cookies.get(SESSION_COOKIE)
        if token:
            self._sessions.pop(hashlib.sha256(token.encode()).hexdigest(), None)
        response = web.HTTPSeeOther("/ui")
        response.del_cookie(SESSION_COOKIE, path="/")
        raise response

    def _unauthorised(self) -> web.Response:
        body = {"error": {"message": "the dashboard needs an API key", "type": "invalid_request_error",
                          "param": None, "code": "invalid_api_key"}}  # fmt: skip
        return web.json_response(body, status=401, headers={"WWW-Authenticate": "Bearer"})

    # -- data --
    async def handle_status(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return self._unauthorised()
        s = self.sampler
        auth = "true" if self._keys_required else "false"
        body = f'{{"auth":{auth},"latest":{s.latest_text or "null"},"history":{s.history_text}}}'
        return web.Response(text=body, content_type="application/json", headers={"Cache-Control": "no-store"})

    async def handle_events(self, request: web.Request) -> web.StreamResponse:
        if not self._authorised(request):
            return self._unauthorised()
        if len(self.sampler.subscribers) >= MAX_SUBSCRIBERS:
            return web.json_response({"error": {"message": "too many dashboard streams", "code": "busy"}}, status=503,
                                     headers={"Retry-After": "5"})  # fmt: skip
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                               "X-Accel-Buffering": "no"})  # fmt: skip
        await response.prepare(request)
        queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=2)
        self.sampler.subscribers.add(queue)
        try:
            await response.write(f"retry: {int(self.sampler.settings.interval_s * 1000)}\n\n".encode())
            if self.sampler.latest_text:
                await response.write(f"event: status\ndata: {self.sampler.latest_text}\n\n".encode())
            while True:
                try:
                    text = await asyncio.wait_for(queue.get(), SSE_PING_S)
                except TimeoutError:
                    await response.write(b": ping\n\n")
                    continue
                if text is None:
                    break
                await response.write(f"event: status\ndata: {text}\n\n".encode())
        except ConnectionResetError:
            pass  # the page went away
        finally:
            self.sampler.subscribers.discard(queue)
        return response
