"""Gateway configuration: which services exist, which backends serve them, and the limits that apply.

Built from a Plan, from `--backend NAME=URL` pairs, or both. Everything here is frozen; the live state
(health, outstanding requests) lives in `gpumix.gateway.backends`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

from gpumix.errors import GpumixError
from gpumix.launch.commands import HEALTH_PATHS
from gpumix.plan.result import (  # noqa: F401  (the endpoint names are re-exported for the gateway's users)
    CHAT,
    COMPLETIONS,
    EMBEDDINGS,
    ENDPOINTS_BY_KIND,
    IMAGES,
    MODERATIONS,
    RERANK,
    TRANSCRIPTIONS,
    Plan,
    PlannedService,
    read_plan_json,
)

PROXIED_ENDPOINTS = (CHAT, COMPLETIONS, EMBEDDINGS, RERANK, IMAGES, TRANSCRIPTIONS, MODERATIONS)
# A backend given without a plan is matched to a kind by its name, so `--backend embeddings=URL` serves
# /v1/embeddings; any other name serves every endpoint.
_KIND_BY_BACKEND_NAME = {
    "chat": "llm", "llm": "llm", "completions": "llm",
    "embedding": "embedding", "embeddings": "embedding", "embed": "embedding",
    "rerank": "reranker", "reranker": "reranker",
    "image": "image", "images": "image",
    "audio": "audio", "whisper": "audio", "transcription": "audio", "transcriptions": "audio",
}  # fmt: skip

API_KEYS_ENV = "GPUMIX_API_KEYS"
# OpenAI's audio upload limit is 25 MB (platform.openai.com/docs/guides/speech-to-text); leave room for the form.
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_concurrency_per_backend: int = 64  # requests in flight to one backend
    max_queue_per_backend: int = 256  # requests waiting for a slot; beyond that → 429
    queue_wait_timeout_s: float = 30.0
    connect_timeout_s: float = 2.0
    first_byte_timeout_s: float = 60.0  # until the backend's response headers
    total_timeout_s: float = 600.0
    max_attempts: int = 3  # per request, over replicas and the fallback


@dataclass(frozen=True)
class HealthSettings:
    path: str = "/health"
    interval_s: float = 2.0
    timeout_s: float = 1.0
    failure_threshold: int = 3  # consecutive passive failures that open the circuit
    cooldown_s: float = 5.0  # how long an open circuit keeps a backend out


@dataclass(frozen=True)
class DashboardSettings:
    """The live dashboard at /ui (gpumix.gateway.dashboard)."""

    interval_s: float = 2.0  # the sampler's period
    history_s: float = 600.0  # how much history the page's charts get
    run_dir: Path | None = None  # the `gpumix up` run directory: the supervisor's state.json


@dataclass(frozen=True)
class ServiceConfig:
    name: str
    urls: tuple[str, ...]
    endpoints: tuple[str, ...]
    aliases: tuple[str, ...] = ()  # other names a request's `model` may use (catalog id, file stem)
    fallback: str | None = None
    gbp_per_million_tokens: float | None = None
    model_id: str | None = None
    health_path: str | None = None  # the engine's own (sd-server has no /health); None = HealthSettings.path
    weights: tuple[float, ...] = ()  # per URL: the replica's planned share of the streams; () = equal

    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


@dataclass(frozen=True)
class GatewayConfig:
    services: tuple[ServiceConfig, ...]
    routes: dict[str, str] = field(default_factory=dict)  # endpoint → service name (pinned)
    limits: Limits = Limits()
    health: HealthSettings = HealthSettings()
    api_keys: frozenset[str] = frozenset()
    access_log: Path | None = None
    redis_url: str | None = None
    async_endpoints: tuple[str, ...] = PROXIED_ENDPOINTS  # endpoints that honour `Prefer: respond-async`
    plan: Plan | None = None  # the plan the services came from (the dashboard shows its predictions and cards)
    dashboard: DashboardSettings | None = DashboardSettings()  # None: no /ui, /api/status, /api/events
    balance: str = "shares"  # BALANCE_MODES: how a backends file's weights are used
    backends_file: Path | None = None  # JSON (BackendsFile), re-read when it changes (`gpumix up --ray`)
    backends_poll_s: float = 0.5

    def service(self, name: str) -> ServiceConfig:
        for svc in self.services:
            if svc.name == name:
                return svc
        raise KeyError(name)


def endpoints_for(service: PlannedService) -> tuple[str, ...]:
    """The endpoints a planned service answers: its own list, else derived from its kind."""
    return service.served_endpoints()


def parse_pair(text: str, flag: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise GpumixError(f"{flag} {text!r} is not KEY=VALUE", hint=f"e.g. {flag} chat=http://127.0.0.1:8001")
    return key.strip(), value.strip()


def _check_url(url: str, name: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise GpumixError(f"--backend {name}={url}: not an http(s) URL", hint="e.g. http://127.0.0.1:8001")
    return url.rstrip("/")


def _backend_urls(backends: list[str]) -> dict[str, list[str]]:
    urls: dict[str, list[str]] = {}
    for pair in backends:
        name, url = parse_pair(pair, "--backend")
        urls.setdefault(name, []).append(_check_url(url, name))
    return urls


BALANCE_MODES = ("shares", "least-outstanding")


def _from_plan(plan: Plan, urls: dict[str, list[str]], balance: str = "shares") -> list[ServiceConfig]:
    unknown = sorted(set(urls) - {s.name for s in plan.services})
    if unknown:
        raise GpumixError(
            f"--backend names {', '.join(unknown)} are not services in the plan",
            hint=f"the plan's services are: {', '.join(s.name for s in plan.services)}",
        )
    services = []
    for svc in plan.services:
        aliases = [svc.model] if svc.model != svc.name else []
        if svc.model_path:
            stem = Path(svc.model_path).stem
            if stem not in (svc.name, svc.model):
                aliases.append(stem)
        service_urls = tuple(urls.get(svc.name, ()))
        # The plan's replica shares, when the backends are the service's replicas in plan order (`gpumix up` passes
        # them so); a gateway for some of them (one host of several) balances them equally.
        weights = tuple(svc.replica_shares) if balance == "shares" and len(svc.replica_shares) == len(service_urls) else ()
        services.append(
            ServiceConfig(
                name=svc.name,
                urls=service_urls,
                weights=weights,
                endpoints=endpoints_for(svc),
                aliases=tuple(aliases),
                fallback=svc.fallback,
                gbp_per_million_tokens=svc.gbp_per_million_tokens,
                model_id=svc.model,
                health_path=HEALTH_PATHS.get(svc.engine),
            )
        )
    return services


def _from_backends(urls: dict[str, list[str]]) -> list[ServiceConfig]:
    services = []
    for name, service_urls in urls.items():
        kind = _KIND_BY_BACKEND_NAME.get(name.lower())
        endpoints = ENDPOINTS_BY_KIND[kind] if kind else PROXIED_ENDPOINTS
        services.append(ServiceConfig(name=name, urls=tuple(service_urls), endpoints=endpoints))
    return services


def _routes(pairs: list[str], services: list[ServiceConfig]) -> dict[str, str]:
    names = {s.name for s in services}
    routes = {}
    for pair in pairs:
        endpoint, name = parse_pair(pair, "--route")
        if endpoint not in PROXIED_ENDPOINTS:
            raise GpumixError(
                f"--route {pair}: unknown endpoint {endpoint}", hint=f"one of {', '.join(PROXIED_ENDPOINTS)}"
            )
        if name not in names:
            raise GpumixError(
                f"--route {pair}: no service or backend named {name}", hint=f"known: {', '.join(sorted(names))}"
            )
        routes[endpoint] = name
    return routes


def load_api_keys(path: Path | None, env_var: str = API_KEYS_ENV) -> frozenset[str]:
    """Keys from a file (one per line, # comments) and/or a comma-separated environment variable."""
    keys: set[str] = set()
    if path is not None:
        try:
            text = path.read_text()
        except OSError as exc:
            raise GpumixError(f"cannot read API key file {path}: {exc.strerror}", hint="one key per line") from exc
        keys.update(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))
        if not keys:
            raise GpumixError(f"API key file {path} holds no keys", hint="one key per line")
    keys.update(k.strip() for k in os.environ.get(env_var, "").split(",") if k.strip())
    return frozenset(keys)


def load_plan(path: Path) -> Plan:
    return read_plan_json(path)


def build_config(
    plan: Plan | None,
    backends: Sequence[str],
    routes: Sequence[str] = (),
    *,
    limits: Limits | None = None,
    health: HealthSettings | None = None,
    api_keys: frozenset[str] = frozenset(),
    access_log: Path | None = None,
    redis_url: str | None = None,
    balance: str = "shares",
    dashboard: DashboardSettings | None = DashboardSettings(),
    backends_file: Path | None = None,
) -> GatewayConfig:
    """Services from the plan and/or `NAME=URL` backend pairs; the keywords are GatewayConfig's other fields
    (None: its default). `balance`: `shares` weights a service's replicas by the plan's replica_shares,
    `least-outstanding` ignores them."""
    if balance not in BALANCE_MODES:
        raise GpumixError(f"unknown --balance {balance!r}", hint=f"use {' or '.join(BALANCE_MODES)}")
    urls = _backend_urls(list(backends))
    from_file = read_backends_file(backends_file) if backends_file is not None else None
    if from_file is not None:
        urls |= from_file.services
    if plan is None and not urls:
        raise GpumixError(
            "the gateway needs a plan or at least one --backend", hint="--backend chat=http://127.0.0.1:8001"
        )
    services = _from_plan(plan, urls, balance) if plan is not None else _from_backends(urls)
    if from_file is not None and balance == "shares":
        services = [_with_file_weights(s, from_file) for s in services]
    names = {s.name for s in services}
    for svc in services:
        if svc.fallback and svc.fallback not in names:
            raise GpumixError(
                f"service {svc.name}: fallback {svc.fallback!r} is not a service", hint="fix the plan's fallback"
            )
    return GatewayConfig(
        services=tuple(services), routes=_routes(list(routes), services), limits=limits or Limits(),
        health=health or HealthSettings(), api_keys=api_keys, access_log=access_log, redis_url=redis_url,
        plan=plan, dashboard=dashboard, balance=balance, backends_file=backends_file,
    )  # fmt: skip


def _with_file_weights(svc: ServiceConfig, table: BackendsFile) -> ServiceConfig:
    """The service with the backends file's weights, when the file gives one per URL (it lists the replicas of a
    deployment whose parts may have moved, so the plan's own shares may no longer line up with its URLs)."""
    weights = table.weights_of(svc.name)
    return replace(svc, weights=weights) if weights and len(weights) == len(svc.urls) else svc


MAX_BACKENDS_FILE_BYTES = 1_000_000


@dataclass(frozen=True)
class BackendsFile:
    """A backends file, as `gpumix up --ray` writes it and the gateway follows it:
    `{"services": {NAME: [URL, ...]}, "weights": {NAME: [W, ...]}, "dead": [URL, ...]}`.
    `weights` (optional, one per URL): each replica's streams (its planned -np / --max-num-seqs), which the gateway
    balances in-flight requests by under `--balance shares`; `dead`: URLs whose host died (requests waiting on them
    are failed over at once)."""

    services: dict[str, list[str]]
    weights: dict[str, list[float]] = field(default_factory=dict)
    dead: frozenset[str] = frozenset()

    def weights_of(self, service: str) -> tuple[float, ...]:
        """The service's weights, one per URL; () when the file gives none or not one per URL."""
        weights = self.weights.get(service, [])
        return tuple(weights) if len(weights) == len(self.services.get(service, [])) else ()


def read_backends_file(path: Path) -> BackendsFile:
    """Read and check a backends file (every URL, every weight > 0); a bad file is a GpumixError naming the field."""
    try:
        if path.stat().st_size > MAX_BACKENDS_FILE_BYTES:
            raise GpumixError(f"backends file {path}: larger than {MAX_BACKENDS_FILE_BYTES} bytes")
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise GpumixError(f"cannot read backends file {path}: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise GpumixError(f"backends file {path} is not JSON: {exc}") from None
    services = data.get("services") if isinstance(data, dict) else None
    if not isinstance(services, dict) or not all(
        isinstance(k, str) and isinstance(v, list) and all(isinstance(u, str) for u in v) for k, v in services.items()
    ):
        raise GpumixError(f"backends file {path}: expected {{\"services\": {{NAME: [URL, ...]}}}}")
    weights = data.get("weights", {})
    if not isinstance(weights, dict) or not all(
        isinstance(v, list) and all(isinstance(w, int | float) and not isinstance(w, bool) and w > 0 for w in v)
        for v in weights.values()
    ):
        raise GpumixError(f"backends file {path}: \"weights\" must be {{NAME: [NUMBER > 0, ...]}}")
    dead = data.get("dead", [])
    if not isinstance(dead, list) or not all(isinstance(u, str) for u in dead):
        raise GpumixError(f"backends file {path}: \"dead\" must be a list of URLs")
    return BackendsFile(
        services={name: [_check_url(url, name) for url in urls] for name, urls in services.items()},
        weights={str(name): [float(w) for w in ws] for name, ws in weights.items()},
        dead=frozenset(u.rstrip("/") for u in dead),
    )
