"""Prometheus metrics and the JSON-lines access log: requests, latency, tokens and £ cost per service."""

from __future__ import annotations

import contextlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class GatewayMetrics:
    """One registry per gateway (not the process-global one), so several gateways can live in one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "gpumix_gateway_requests", "Requests answered", ["service", "endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "gpumix_gateway_request_seconds", "Time to the last byte", ["service", "endpoint"],
            buckets=_LATENCY_BUCKETS_S, registry=r,
        )  # fmt: skip
        self.tokens = Counter("gpumix_gateway_tokens", "Tokens used", ["service", "kind"], registry=r)
        self.cost = Counter(
            "gpumix_gateway_cost_gbp", "Cost in GBP from the plan's £/M tokens", ["service"], registry=r
        )
        self.retries = Counter("gpumix_gateway_retries", "Attempts moved to another backend", ["service"], registry=r)
        self.upstream_failures = Counter(
            "gpumix_gateway_upstream_failures", "Failed attempts per backend", ["backend"], registry=r
        )
        self.outstanding = Gauge(
            "gpumix_gateway_outstanding", "Requests in flight per backend", ["backend"], registry=r
        )
        self.healthy = Gauge("gpumix_gateway_backend_up", "1 when the backend takes traffic", ["backend"], registry=r)
        self._children: dict[tuple, Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, cached: the lookup sits on every request's path."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def forget(self, metric: Any, *labels: str) -> None:
        """Drop one labelled series (a backend removed from the table)."""
        self._children.pop((id(metric), labels), None)
        with contextlib.suppress(KeyError):
            metric.remove(*labels)


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    counted: bool = False  # True when estimated from stream events, not reported by the backend

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def usage_from_json(payload: object) -> Usage | None:
    if not isinstance(payload, dict):
        return None
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens") or usage.get("input_tokens") or 0
    completion = usage.get("completion_tokens") or usage.get("output_tokens") or 0
    if not prompt and not completion and usage.get("total_tokens"):
        prompt = usage["total_tokens"]
    return Usage(int(prompt), int(completion))


_USAGE_RE = re.compile(rb'"usage"\s*:\s*\{')


class StreamUsage:
    """Counts tokens in an SSE stream: the backend's `usage` chunk when it sends one, else one per data event."""

    def __init__(self) -> None:
        self.events = 0
        self.reported: Usage | None = None
        self._tail = b""

    def feed(self, chunk: bytes) -> None:
        data = self._tail + chunk
        lines = data.split(b"\n")
        self._tail = lines.pop()
        for line in lines:
            if not line.startswith(b"data:"):
                continue
            body = line[5:].strip()
            if body == b"[DONE]":
                continue
            self.events += 1
            if _USAGE_RE.search(body):
                try:
                    found = usage_from_json(json.loads(body))
                except ValueError:
                    found = None
                if found is not None:
                    self.reported = found

    def usage(self) -> Usage:
        if self.reported is not None:
            return self.reported
        return Usage(0, self.events, counted=True)


class AccessLog:
    """JSON lines, buffered; flushed by the gateway's housekeeping loop and on close."""

    def __init__(self, path: Path | None) -> None:
        self._file: IO[str] | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("a", buffering=1 << 16)

    def write(self, record: dict) -> None:
        if self._file is not None:
            record["ts"] = round(time.time(), 6)
            self._file.write(json.dumps(record, separators=(",", ":")) + "\n")

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
