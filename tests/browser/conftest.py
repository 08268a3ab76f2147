"""A real browser for the tests: Debian's chromium driven by Playwright (never `playwright install`).

Every request the page makes goes through a router that lets only local ones through (127.0.0.1, localhost,
file:, data:, blob:) and aborts and records everything else; each test's page then asserts that no non-local
request was attempted and that the console logged no error.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pytest

CHROMIUM_PATHS = ("/usr/lib/chromium/chromium", "/usr/bin/chromium")
# Headless, no sandbox (tests run as root), and none of Chrome's own background traffic (updates, sync, ...).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-default-apps", "--disable-domain-reliability"]  # fmt: skip
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
LOCAL_SCHEMES = {"data", "blob", "file", "about"}


def is_local(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme in LOCAL_SCHEMES:
        return True
    return parts.scheme in ("http", "https", "ws", "wss") and (parts.hostname or "") in LOCAL_HOSTS


def chromium_path() -> str | None:
    return next((p for p in CHROMIUM_PATHS if os.access(p, os.X_OK)), None)


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory: pytest.TempPathFactory):
    """One chromium per test module. Not per session: Playwright's sync API runs an event loop on this thread
    while it is open, and later tests that call asyncio.run() must not find it there."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright for Python is not installed (pip install -e '.[dev]'; `make test` does it)")
    executable = chromium_path()
    if executable is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; `make system-deps` does it)")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=executable, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1200, "height": 900}, service_workers="block",
        )  # fmt: skip
        try:
            yield context
        finally:
            context.close()


@dataclass
class GuardedPage:
    page: object  # playwright.sync_api.Page
    blocked: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    def assert_clean(self) -> None:
        assert not self.blocked, f"non-local requests were attempted: {self.blocked}"
        assert not self.console_errors, f"console errors: {self.console_errors}"


@pytest.fixture
def guarded_page(browser_context) -> Iterator[GuardedPage]:
    page = browser_context.new_page()
    guard = GuardedPage(page)

    def route(r) -> None:  # noqa: ANN001 - playwright Route
        if is_local(r.request.url):
            r.continue_()
        else:
            guard.blocked.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.on("console", lambda m: guard.console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: guard.console_errors.append(f"uncaught: {e}"))
    page.on("requestfailed", lambda r: None if is_local(r.url) or r.url in guard.blocked else guard.blocked.append(r.url))
    try:
        yield guard
        guard.assert_clean()
    finally:
        page.close()

