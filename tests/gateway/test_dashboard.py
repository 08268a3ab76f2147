"""The dashboard's data and access: /api/status and /api/events from a real gateway over real fake backends,
the login for gateways with API keys, and the histogram quantiles it reports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from gwhelpers import PY, Procs, free_port, make_plan, planned_service, wait_http

from gpumix.gateway.dashboard import quantile
from gpumix.plan.result import Cost

KEY = "dash-test-key-0123456789"


def _status(url: str, **kw) -> dict:
    reply = httpx.get(f"{url}/api/status", timeout=5, **kw)
    reply.raise_for_status()
    return reply.json()


def _wait_for(url: str, predicate, timeout_s: float = 20.0, **kw) -> dict:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = _status(url, **kw)
        if last["latest"] and predicate(last["latest"]):
            return last["latest"]
        time.sleep(0.1)
    raise AssertionError(f"condition not met within {timeout_s} s; last snapshot: {last}")


def _health(snapshot: dict) -> dict[str, str]:
    return {s["name"]: s["health"] for s in snapshot["services"]}


@pytest.fixture
def plan_file(tmp_path: Path) -> Path:
    plan = make_plan(planned_service("chat", "gemma-3-270m", predicted={"decode_tokens_per_s": 50.0,
                                                                        "aggregate_tokens_per_s": 90.0}),
                     planned_service("embed", "bge-m3", kind="embedding"))  # fmt: skip
    plan = plan.model_copy(update={"cost": Cost(gbp_per_month=575.0, gbp_per_million_tokens=1.5)})
    path = tmp_path / "plan.json"
    path.write_text(plan.model_dump_json())
    return path


def _gateway(procs: Procs, plan_file: Path, chat: str, embed: str, *extra: str, env: dict | None = None):
    port = free_port()
    env = os.environ | {"GPUMIX_UI_INTERVAL_S": "0.2"} | (env or {})
    args = [PY, "-m", "gpumix", "gateway", "--port", str(port), "--plan", str(plan_file), "--backend", f"chat={chat}",
            "--backend", f"embed={embed}", "--health-interval-s", "0.3", *extra]  # fmt: skip
    log = (procs.tmp / f"gateway-{port}.log").open("w")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    procs.procs.append(proc)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/health", proc=proc, ok=(200, 503))
    return url, proc


def test_quantile_interpolates_inside_buckets() -> None:
    buckets = [(0.01, 10.0), (0.1, 90.0), (1.0, 100.0), (float("inf"), 100.0)]
    assert quantile(buckets, 0.5) == pytest.approx(0.01 + 0.09 * 40 / 80)
    assert quantile(buckets, 0.99) == pytest.approx(0.1 + 0.9 * 9 / 10)
    assert quantile([(0.01, 0.0), (float("inf"), 0.0)], 0.5) is None
    assert quantile([(0.01, 0.0), (float("inf"), 4.0)], 0.5) == 0.01  # all above the last finite bound


def test_status_counts_requests_and_follows_a_dead_backend(procs: Procs, plan_file: Path) -> None:
    chat_url, chat_proc = procs.backend()
    embed_url, _ = procs.backend()
    url, _ = _gateway(procs, plan_file, chat_url, embed_url)
    first = _wait_for(url, lambda s: _health(s) == {"chat": "healthy", "embed": "healthy"})
    assert first["plan"]["services"] == 2 and first["devices"][0]["id"] == "gpu0"
    assert first["devices"][0]["memory_planned_bytes"] == 2**30
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(timeout=10) as client:
        for _ in range(30):
            assert client.post(f"{url}/v1/chat/completions", json=body).status_code == 200
    snap = _wait_for(url, lambda s: s["totals"]["requests_total"] == 30 and s["totals"]["p50_ms"] is not None)
    chat = next(s for s in snap["services"] if s["name"] == "chat")
    assert chat["requests_total"] == 30 and chat["predicted_tokens_per_s"] == 90.0 and chat["p99_ms"] >= chat["p50_ms"] > 0
    embed = next(s for s in snap["services"] if s["name"] == "embed")
    assert embed["predicted_tokens_per_s"] is None  # embeddings generate no tokens
    assert snap["cost"]["gbp_per_month"] == 575.0 and snap["cost"]["rent_so_far_gbp"] > 0
    assert snap["cost"]["completion_tokens"] > 0

    procs.kill(chat_proc)
    down = _wait_for(url, lambda s: _health(s)["chat"] != "healthy")
    assert _health(down)["embed"] == "healthy" and down["totals"]["healthy"] == 1
    port = int(chat_url.rsplit(":", 1)[1])
    procs.backend(port=port)
    _wait_for(url, lambda s: _health(s)["chat"] == "healthy")
    history = _status(url)["history"]
    assert len(history) >= 3 and min(p["healthy"] for p in history) == 1 and history[-1]["healthy"] == 2


def test_events_stream_snapshots(procs: Procs, plan_file: Path) -> None:
    chat_url, _ = procs.backend()
    url, _ = _gateway(procs, plan_file, chat_url, chat_url)
    events = []
    with httpx.stream("GET", f"{url}/api/events", timeout=10) as reply:
        assert reply.headers["content-type"].startswith("text/event-stream")
        for line in reply.iter_lines():
            if line.startswith("data: "):
                events.append(line)
            if len(events) == 3:
                break
    stamps = [json.loads(e[6:])["ts"] for e in events]
    assert stamps == sorted(stamps) and len(set(stamps)) >= 2  # a new snapshot per sampler tick


def test_gateway_stops_promptly_with_a_dashboard_open(procs: Procs, plan_file: Path) -> None:
    chat_url, _ = procs.backend()
    url, proc = _gateway(procs, plan_file, chat_url, chat_url)
    with httpx.stream("GET", f"{url}/api/events", timeout=10) as reply:
        next(reply.iter_lines())
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
    assert time.monotonic() - started < 5  # open event streams end at shutdown instead of holding it


def test_api_keys_guard_the_page_and_its_data(procs: Procs, plan_file: Path, tmp_path: Path) -> None:
    chat_url, _ = procs.backend()
    log = tmp_path / "access.jsonl"
    url, _ = _gateway(procs, plan_file, chat_url, chat_url, "--access-log", str(log), env={"GPUMIX_API_KEYS": KEY})
    assert httpx.get(f"{url}/api/status").status_code == 401
    assert httpx.get(f"{url}/api/events").status_code == 401
    page = httpx.get(f"{url}/ui")
    assert page.status_code == 200 and 'name="key"' in page.text and "/ui/app.js" not in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert httpx.post(f"{url}/ui/login", data={"key": "wrong"}).status_code == 401
    assert httpx.post(f"{url}/ui/login", data={"key": KEY[:-1]}).status_code == 401
    with httpx.Client(base_url=url) as client:
        login = client.post("/ui/login", data={"key": KEY})
        assert login.status_code == 303 and login.headers["location"] == "/ui"
        cookie = login.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and KEY not in cookie
        assert "/ui/app.js" in client.get("/ui").text
        assert client.get("/api/status").status_code == 200
        client.post("/ui/logout")
        assert client.get("/api/status").status_code == 401
    assert _status(url, headers={"Authorization": f"Bearer {KEY}"})["auth"] is True
    httpx.post(f"{url}/v1/chat/completions", json={"model": "chat", "messages": []}, headers={"Authorization": f"Bearer {KEY}"})
    time.sleep(1.5)  # the access log is flushed every second
    assert log.read_text() and KEY not in log.read_text()


def test_no_ui_option(procs: Procs, plan_file: Path) -> None:
    chat_url, _ = procs.backend()
    url, _ = _gateway(procs, plan_file, chat_url, chat_url, "--no-ui")
    assert httpx.get(f"{url}/ui").status_code == 404 and httpx.get(f"{url}/api/status").status_code == 404


def test_module_imports_no_planner() -> None:
    """The gateway reads plans through gpumix.report.plan_fields, which must stay light."""
    code = "import sys, gpumix.gateway.dashboard; print(any(m.startswith('gpumix.plan.planner') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_health_combines_supervisor_state_and_gateway_checks() -> None:
    from gpumix.gateway.dashboard import _health

    up, down = {"up": True}, {"up": False}
    healthy, backoff = {"state": "healthy"}, {"state": "backoff"}
    assert _health([up], [healthy]) == "healthy"
    assert _health([down], [backoff]) == "backoff"  # the supervisor knows why: it is restarting it
    assert _health([up, down], [healthy, backoff]) == "degraded"  # one replica of two
    assert _health([down], [healthy]) == "unhealthy"  # the process runs but the gateway cannot reach it
    assert _health([up, down], []) == "degraded" and _health([], []) == "no backend"
    assert _health([down], [{"state": "failed"}]) == "unhealthy"


def test_usage_with_nested_details_is_counted() -> None:
    """llama-server's usage carries `prompt_tokens_details: {...}`; the gateway must still count its tokens
    (the dashboard's measured tokens/s come from that count)."""
    from gpumix.gateway.metrics import usage_from_json
    from gpumix.gateway.server import _USAGE_OBJECT_RE

    body = (b'{"choices":[{"message":{"content":"hi"}}],"usage":{"completion_tokens":5,"prompt_tokens":25,'
            b'"total_tokens":30,"prompt_tokens_details":{"cached_tokens":0}},"timings":{"prompt_n":25}}')  # fmt: skip
    match = _USAGE_OBJECT_RE.search(body)
    assert match is not None
    usage = usage_from_json({"usage": json.loads(match.group(1))})
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (25, 5)


def test_cards_of_a_multi_host_plan_are_read_by_id_on_the_run_host() -> None:
    """Only the run host's devices are measured (matched by device id, not by position); another host's cards keep
    their plan and say where they are read; without a run dir a multi-host plan measures nothing here."""
    from gpumix.gateway.dashboard import _devices, _Run
    from gpumix.plan.result import Plan, PlannedDevice
    from gpumix.run.state import ProcessStatus, RunState
    from gpumix.run.status import ProcessReport

    def dev(host: str, kind: str, index: int) -> PlannedDevice:
        local = f"gpu{index}" if kind == "gpu" else "cpu0"
        return PlannedDevice(id=f"{host}/{local}", index=index, name="RTX 4090" if kind == "gpu" else "CPU",
                             catalog_id="rtx-4090" if kind == "gpu" else "cpu", kind=kind, host=host,
                             memory_total_bytes=24 * 2**30, memory_free_bytes=24 * 2**30,
                             memory_planned_bytes=(index + 2) * 2**30)  # fmt: skip

    devices = [dev("alpha", "gpu", 0), dev("beta", "cpu", -1), dev("beta", "gpu", 0), dev("beta", "gpu", 1)]
    chat = planned_service("chat", "gemma-3-270m").model_copy(update={"devices": ["beta/cpu0"], "host": "beta"})
    plan = Plan(feasible=True, devices=devices, services=[chat])
    doc = plan.model_dump(mode="json")

    alone, _ = _devices(plan, doc, None)
    assert [d["id"] for d in alone] == ["alpha/gpu0", "beta/cpu0", "beta/gpu0", "beta/gpu1"]
    assert all(d["memory_used_bytes"] is None and "--run-dir" in d["source"] for d in alone)

    proc = ProcessStatus(name="chat", service="chat", port=1, url="http://127.0.0.1:1", health_url="http://127.0.0.1:1/health",
                         log="chat.log", argv=["llama-server"], devices=["beta/cpu0"])  # fmt: skip
    state = RunState(supervisor_pid=1, started_at=0.0, plan_path="plan.json", host="beta", processes=[proc])
    report = ProcessReport(name="chat", service="chat", state="healthy", pid=123, port=1, restarts=0, uptime_s=5.0,
                           health="ok", rss_bytes=3 * 2**30, cpu_pct=50.0, log="chat.log")  # fmt: skip
    run = _Run(summary={}, started_at=0.0, processes=[], state=state, reports=[report])
    cards, _ = _devices(plan, doc, run)
    by_id = {d["id"]: d for d in cards}
    assert by_id["beta/cpu0"]["memory_used_bytes"] == 3 * 2**30 and by_id["beta/cpu0"]["source"] == "process rss"
    assert by_id["beta/gpu1"]["memory_planned_bytes"] == 3 * 2**30 and by_id["beta/gpu1"]["source"] != "process rss"
    assert by_id["alpha/gpu0"]["source"] == "on host alpha (read there)"
    assert by_id["alpha/gpu0"]["memory_used_bytes"] is None and by_id["alpha/gpu0"]["memory_planned_bytes"] == 2 * 2**30
