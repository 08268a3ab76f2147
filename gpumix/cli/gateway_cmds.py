"""`gpumix gateway` and `gpumix queue ...`: thin wrappers over gpumix.gateway."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from gpumix.errors import GpumixError

if TYPE_CHECKING:
    from gpumix.gateway.queue import Job, JobQueue

T = TypeVar("T")

queue_app = typer.Typer(help="Job queue on Redis Streams: submit, status, result, worker.", no_args_is_help=True)


def gateway(
    plan: Annotated[Path | None, typer.Option("--plan", "-p", help="plan.json from `gpumix plan`")] = None,
    host: Annotated[str, typer.Option(help="address to bind (127.0.0.1 keeps it local)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8080,
    backend: Annotated[
        list[str] | None, typer.Option("--backend", "-b", help="NAME=URL (repeat; several URLs for a name = replicas)")
    ] = None,
    route: Annotated[
        list[str] | None, typer.Option("--route", help="ENDPOINT=NAME pins an endpoint, e.g. /v1/embeddings=embed")
    ] = None,
    api_keys_file: Annotated[
        Path | None, typer.Option(help="file with one API key per line (else none required)")
    ] = None,
    api_keys_env: Annotated[
        str, typer.Option(help="environment variable with comma-separated API keys")
    ] = "GPUMIX_API_KEYS",
    access_log: Annotated[Path | None, typer.Option(help="JSON-lines access log file")] = None,
    redis: Annotated[
        str | None, typer.Option(help="Redis URL; enables `Prefer: respond-async` and /v1/jobs/{id}")
    ] = None,
    max_body_mb: Annotated[float, typer.Option(help="largest request body, MiB")] = 32.0,
    max_concurrency: Annotated[int, typer.Option(help="requests in flight per backend")] = 64,
    max_queue: Annotated[int, typer.Option(help="requests waiting per backend before 429")] = 256,
    connect_timeout_s: Annotated[float, typer.Option(help="backend connect timeout")] = 2.0,
    first_byte_timeout_s: Annotated[float, typer.Option(help="timeout until the backend's response headers")] = 60.0,
    total_timeout_s: Annotated[float, typer.Option(help="timeout for the whole request")] = 600.0,
    max_attempts: Annotated[int, typer.Option(help="attempts per request across replicas and the fallback")] = 3,
    health_interval_s: Annotated[float, typer.Option(help="seconds between active health checks")] = 2.0,
    health_path: Annotated[str, typer.Option(help="backend health path (200 = ready)")] = "/health",
    cooldown_s: Annotated[float, typer.Option(help="how long a tripped circuit keeps a backend out")] = 5.0,
    ui: Annotated[bool, typer.Option("--ui/--no-ui", help="serve the live dashboard at /ui (+ /api/status, /api/events)")] = True,
    ui_interval_s: Annotated[
        float, typer.Option(help="dashboard sampling period", envvar="GPUMIX_UI_INTERVAL_S", min=0.1, max=60.0)
    ] = 2.0,
    run_dir: Annotated[
        Path | None, typer.Option(help="`gpumix up` run directory: the dashboard shows its processes and cards")
    ] = None,
    balance: Annotated[
        str, typer.Option(help="replicas: `shares` (in-flight requests in proportion to the plan's replica shares) "
                          "or `least-outstanding`")  # fmt: skip
    ] = "shares",
    backends_file: Annotated[
        Path | None,
        typer.Option(help='JSON {"services": {NAME: [URL, ...]}, "weights": {NAME: [STREAMS, ...]}}, re-read when '
                     "it changes (`up --ray` writes it)"),  # fmt: skip
    ] = None,
) -> None:
    """Serve the plan's services behind one OpenAI-compatible port."""
    from gpumix.gateway.config import DashboardSettings, HealthSettings, Limits, build_config, load_api_keys, load_plan
    from gpumix.gateway.server import Gateway, serve

    limits = Limits(
        max_body_bytes=int(max_body_mb * 1024 * 1024), max_concurrency_per_backend=max_concurrency,
        max_queue_per_backend=max_queue, connect_timeout_s=connect_timeout_s,
        first_byte_timeout_s=first_byte_timeout_s, total_timeout_s=total_timeout_s, max_attempts=max_attempts,
    )  # fmt: skip
    health = HealthSettings(path=health_path, interval_s=health_interval_s, cooldown_s=cooldown_s)
    config = build_config(
        load_plan(plan) if plan else None, backend or [], route or [], limits=limits, health=health,
        api_keys=load_api_keys(api_keys_file, api_keys_env), access_log=access_log, redis_url=redis, balance=balance,
        dashboard=DashboardSettings(interval_s=ui_interval_s, run_dir=run_dir) if ui else None,
        backends_file=backends_file,
    )  # fmt: skip
    serve(Gateway(config), host, port)


def _queue(redis: str | None) -> JobQueue:
    from gpumix.gateway.queue import JobQueue, redis_url_from_env

    url = redis_url_from_env(redis)
    try:
        return JobQueue(url)
    except ValueError as exc:
        raise GpumixError(f"bad Redis URL {url!r}: {exc}", hint="e.g. redis://127.0.0.1:6379/0") from exc


def _run(coro: Coroutine[Any, Any, T]) -> T:
    from redis.exceptions import ConnectionError as RedisConnectionError

    try:
        return asyncio.run(coro)
    except RedisConnectionError as exc:
        raise GpumixError(
            f"cannot reach Redis: {exc}", hint="start redis-server, or pass --redis / set GPUMIX_REDIS_URL"
        ) from exc


RedisOpt = Annotated[
    str | None, typer.Option("--redis", help="Redis URL (default $GPUMIX_REDIS_URL or redis://127.0.0.1:6379/0)")
]


@queue_app.command("submit")
def queue_submit(
    job_class: Annotated[str, typer.Option("--class", help="GPU class / service name the job is for")],
    endpoint: Annotated[str, typer.Option(help="OpenAI endpoint the worker calls")] = "/v1/chat/completions",
    body: Annotated[str | None, typer.Option(help="request JSON (or use --file, or stdin)")] = None,
    file: Annotated[Path | None, typer.Option(help="file holding the request JSON")] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="a repeated key returns the first job's id")] = None,
    redis: RedisOpt = None,
) -> None:
    """Queue one job; prints its id."""
    text = body if body is not None else (_read_body_file(file) if file else sys.stdin.read())
    try:
        payload = json.loads(text)
    except ValueError as exc:
        raise GpumixError(
            f"job body is not valid JSON: {exc}", hint="pass a JSON object with --body or --file"
        ) from exc
    if not isinstance(payload, dict):
        raise GpumixError("job body must be a JSON object", hint="e.g. --body '{\"messages\": [...]}'")

    async def go() -> tuple[str, bool]:
        q = _queue(redis)
        try:
            return await q.submit(job_class, endpoint, payload, idempotency_key)
        finally:
            await q.close()

    job_id, created = _run(go())
    typer.echo(job_id if created else f"{job_id} (existing job for this idempotency key)")


def _read_body_file(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise GpumixError(f"cannot read job body file {path}: {exc.strerror}", hint="pass a JSON file with --file") from exc


def _show(job_id: str, redis: str | None, wait_s: float) -> dict[str, Any]:
    async def go() -> Job | None:
        q = _queue(redis)
        try:
            return await (q.wait(job_id, wait_s) if wait_s > 0 else q.status(job_id))
        finally:
            await q.close()

    job = _run(go())
    if job is None:
        raise GpumixError(f"no job {job_id}", hint="results expire after their TTL (24 h by default)")
    return job.public()


@queue_app.command("status")
def queue_status(job_id: str, redis: RedisOpt = None) -> None:
    """Print a job's status as JSON."""
    info = _show(job_id, redis, 0)
    info.pop("result", None)
    typer.echo(json.dumps(info, indent=2))


@queue_app.command("result")
def queue_result(
    job_id: str,
    wait_s: Annotated[float, typer.Option("--wait", help="seconds to wait for the job to finish")] = 0.0,
    redis: RedisOpt = None,
) -> None:
    """Print a finished job's result JSON (exit 1 while it is not done)."""
    info = _show(job_id, redis, wait_s)
    if info["status"] != "done":
        typer.echo(json.dumps(info, indent=2))
        raise typer.Exit(1)
    typer.echo(json.dumps(info["result"], indent=2))


@queue_app.command("worker")
def queue_worker(
    job_class: Annotated[str, typer.Option("--class", help="GPU class / service whose jobs to take")],
    backend: Annotated[str, typer.Option(help="backend base URL, e.g. http://127.0.0.1:8001")],
    concurrency: Annotated[int, typer.Option(help="jobs in flight at once")] = 8,
    visibility_timeout_s: Annotated[
        float, typer.Option(help="idle time before another worker claims a pending job")
    ] = 60.0,
    max_attempts: Annotated[int, typer.Option(help="attempts before the dead-letter stream")] = 3,
    result_ttl_s: Annotated[int, typer.Option(help="how long results are kept")] = 86400,
    redis: RedisOpt = None,
) -> None:
    """Pull jobs of one class and send them to one backend."""
    from gpumix.gateway.queue import QueueSettings, redis_url_from_env, run_worker

    settings = QueueSettings(
        visibility_timeout_s=visibility_timeout_s, max_attempts=max_attempts, result_ttl_s=result_ttl_s
    )
    with contextlib.suppress(KeyboardInterrupt):
        run_worker(redis_url_from_env(redis), job_class, backend, concurrency, settings)


def register(app: typer.Typer) -> None:
    app.command("gateway")(gateway)
    app.add_typer(queue_app, name="queue")
