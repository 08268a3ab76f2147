"""The live dashboard in chromium: logging in, both services healthy, a killed backend turning unhealthy and
back; the page keeps working while the gateway is gone. First over fake backends (fast), then the real CPU demo
under `gpumix up` (two llama-server processes, marked llama)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gateway"))
from browserhelpers import save_screenshot  # noqa: E402
from gwhelpers import PY, Procs, free_port, make_plan, planned_service, wait_http  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
KEY = "browser-test-key-987654321"


def _health_of(page, service: str) -> str | None:  # noqa: ANN001
    return page.get_attribute(f"#services tr[data-service='{service}'] .health", "data-health", timeout=2000)


def _wait_health(page, service: str, want, timeout_s: float = 60.0) -> str:  # noqa: ANN001
    """Poll the page (not the server) until `service`'s badge satisfies `want`; return the value seen."""
    deadline = time.monotonic() + timeout_s
    seen = None
    while time.monotonic() < deadline:
        seen = _health_of(page, service)
        if seen is not None and want(seen):
            return seen
        time.sleep(0.1)
    raise AssertionError(f"{service}: health stayed {seen!r} for {timeout_s} s")


@pytest.fixture
def procs(tmp_path: Path):
    p = Procs(tmp_path)
    yield p
    p.close()


def test_dashboard_login_health_and_a_dead_backend(procs: Procs, tmp_path: Path, guarded_page) -> None:
    chat_url, chat_proc = procs.backend()
    embed_url, _ = procs.backend()
    plan = make_plan(planned_service("chat", "gemma-3-270m", predicted={"aggregate_tokens_per_s": 80.0}),
                     planned_service("embed", "bge-m3", kind="embedding"))  # fmt: skip
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(plan.model_dump_json())
    port = free_port()
    env = os.environ | {"GPUMIX_UI_INTERVAL_S": "0.3", "GPUMIX_API_KEYS": KEY}
    args = [PY, "-m", "gpumix", "gateway", "--port", str(port), "--plan", str(plan_path), "--health-interval-s", "0.3",
            "--backend", f"chat={chat_url}", "--backend", f"embed={embed_url}"]  # fmt: skip
    gateway = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    procs.procs.append(gateway)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/health", proc=gateway, ok=(200, 503))

    page = guarded_page.page
    page.goto(f"{url}/ui")
    page.fill("#key", "not-the-key")
    page.click("button[type=submit]")
    assert "not valid" in page.inner_text("#message")
    guarded_page.console_errors = [e for e in guarded_page.console_errors if "401" not in e]  # the refused login
    page.fill("#key", KEY)
    page.click("button[type=submit]")
    page.wait_for_selector("#services tr[data-service='chat']", timeout=15_000)
    assert page.locator("#cards [data-device]").count() == 1
    _wait_health(page, "chat", lambda h: h == "healthy")
    _wait_health(page, "embed", lambda h: h == "healthy")
    assert not page.is_hidden("#logout")

    procs.kill(chat_proc)
    _wait_health(page, "chat", lambda h: h != "healthy", timeout_s=20)
    assert _health_of(page, "embed") == "healthy"
    procs.backend(port=int(chat_url.rsplit(":", 1)[1]))
    _wait_health(page, "chat", lambda h: h == "healthy", timeout_s=20)
    assert page.locator("#charts svg[data-chart='healthy'] path").count() == 1

    # the gateway itself goes away: the page says so and keeps the last data on screen
    procs.kill(gateway)
    page.wait_for_selector("#conn[data-state='reconnecting'], #conn[data-state='stale']", timeout=20_000)
    assert page.locator("#services tr[data-service='chat']").count() == 1
    # the browser logs the cut event stream and the refused reconnects; they are the point of this step
    expected = ("ERR_CONNECTION_REFUSED", "ERR_INCOMPLETE_CHUNKED_ENCODING")
    guarded_page.console_errors = [e for e in guarded_page.console_errors if not any(x in e for x in expected)]
    guarded_page.assert_clean()


@pytest.mark.llama
@pytest.mark.slow
def test_cpu_demo_dashboard_shows_a_killed_backend_and_its_restart(tmp_path: Path, guarded_page) -> None:
    """`gpumix up examples/cpu-demo.yaml`: the dashboard on the front port shows chat and embed healthy (real
    llama-server), then chat unhealthy after SIGKILL, then healthy again once the supervisor restarted it."""
    from gpumix.launch.llamacpp import require_llama_cpp
    from gpumix.run.state import read_state

    require_llama_cpp()
    run_dir, port = tmp_path / "run", free_port()
    env = os.environ | {"GPUMIX_UI_INTERVAL_S": "0.5"}
    up = subprocess.run([sys.executable, "-m", "gpumix", "up", "examples/cpu-demo.yaml", "--detach", "--port", str(port),
                         "--run-dir", str(run_dir), "--health-timeout-s", "180"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=400)  # fmt: skip
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/health", timeout_s=60)
        page = guarded_page.page
        page.goto(f"{url}/ui")
        page.wait_for_selector("#services tr[data-service='embed']", timeout=20_000)
        _wait_health(page, "chat", lambda h: h == "healthy")
        _wait_health(page, "embed", lambda h: h == "healthy")
        # the CPU card shows the processes' resident memory against the plan
        # (Python-side polling: the page's CSP forbids the eval that wait_for_function would need)
        page.wait_for_selector("#cards [data-device='cpu0'] rect.used", timeout=20_000)
        _traffic(url)
        _wait_text(page, "[data-kpi='tps'] b", lambda t: float(t.split("/")[0].replace(",", "")) > 0)
        _screenshot(page)

        chat = read_state(run_dir).process("chat")
        os.kill(chat.pid, signal.SIGKILL)
        seen = _wait_health(page, "chat", lambda h: h != "healthy", timeout_s=30)
        assert seen in ("backoff", "starting", "unhealthy", "no backend")
        assert _health_of(page, "embed") == "healthy"
        _wait_health(page, "chat", lambda h: h == "healthy", timeout_s=120)
        restarts = page.inner_text("#services tr[data-service='chat'] .restarts")
        assert int(restarts) >= 1
        guarded_page.assert_clean()
    finally:
        subprocess.run([sys.executable, "-m", "gpumix", "down", "--run-dir", str(run_dir)], cwd=ROOT, timeout=120,
                       capture_output=True)  # fmt: skip


def _wait_text(page, selector: str, want, timeout_s: float = 30.0) -> str:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    text = ""
    while time.monotonic() < deadline:
        text = page.inner_text(selector)
        try:
            if want(text):
                return text
        except ValueError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{selector}: {text!r} after {timeout_s} s")


def _traffic(url: str) -> None:
    import httpx

    body = {"model": "chat", "max_tokens": 16, "temperature": 0,
            "messages": [{"role": "user", "content": "Name three colours."}]}  # fmt: skip
    with httpx.Client(timeout=120) as client:
        for _ in range(3):
            client.post(f"{url}/v1/chat/completions", json=body).raise_for_status()
            client.post(f"{url}/v1/embeddings", json={"model": "embed", "input": "mismatched GPUs"}).raise_for_status()


def _screenshot(page) -> None:  # noqa: ANN001
    target = os.environ.get("GPUMIX_SCREENSHOTS_DIR")
    if target:
        time.sleep(2)  # a few more samples in the charts
        save_screenshot(page, Path(target) / "dashboard-cpu-demo.png")
