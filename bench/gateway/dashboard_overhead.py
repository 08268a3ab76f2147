"""Does the dashboard cost proxied requests anything? The same gateway twice — `--no-ui`, and with the dashboard's
sampler running every 0.2 s (10x the default rate) plus an open /api/events stream and /api/status polled every
0.5 s as a browser would — in alternating rounds against one fast backend, same load each round.

    .venv/bin/python bench/gateway/dashboard_overhead.py --rate 200 --duration 5 --rounds 3 \
        --out bench/gateway/results/dashboard_overhead.json

The dashboard adds nothing to the request path by construction (its sampler reads counters the proxy already
keeps, in a worker thread); this measures what it takes from the shared CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import httpx
from common import PY, Processes, free_port, wait_http
from latency_bench import aggregate, run_client


def _browser_like(url: str, stop: threading.Event) -> None:
    """An open event stream and a status poll, as the page keeps."""

    def stream() -> None:
        try:
            with httpx.stream("GET", f"{url}/api/events", timeout=None) as reply:
                for _ in reply.iter_lines():
                    if stop.is_set():
                        return
        except httpx.HTTPError:
            return

    threading.Thread(target=stream, daemon=True).start()
    while not stop.wait(0.5):
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(f"{url}/api/status", timeout=5)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    procs = Processes(Path(tempfile.mkdtemp(prefix="gpumix-dash-bench-")))
    try:
        backend_port = free_port()
        procs.start([PY, "-m", "gpumix.gateway.fake_backend", "--port", str(backend_port)], "backend")
        backend = f"http://127.0.0.1:{backend_port}"
        wait_http(backend + "/health")
        urls = {}
        for name, extra, env in (("no-ui", ["--no-ui"], {}), ("ui", [], {"GPUMIX_UI_INTERVAL_S": "0.2"})):
            port = free_port()
            procs.start([PY, "-m", "gpumix", "gateway", "--port", str(port), "--backend", f"chat={backend}", *extra],
                        f"gateway-{name}", env)  # fmt: skip
            urls[name] = f"http://127.0.0.1:{port}"
            wait_http(urls[name] + "/health")
        stop = threading.Event()
        threading.Thread(target=_browser_like, args=(urls["ui"], stop), daemon=True).start()
        slices: dict[str, list[dict]] = {"no-ui": [], "ui": []}
        for r in range(args.rounds):
            for name in (("no-ui", "ui") if r % 2 == 0 else ("ui", "no-ui")):
                slices[name].append(run_client(urls[name] + "/v1/chat/completions", args.rate, args.duration, False))
                time.sleep(1)
        stop.set()
        result = {name: aggregate(s) for name, s in slices.items()}
        result["settings"] = {"rate": args.rate, "duration_s": args.duration, "rounds": args.rounds,
                              "machine": platform.platform(), "cpus": os.cpu_count(),
                              "load_average": [round(x, 2) for x in os.getloadavg()]}  # fmt: skip
        print(json.dumps(result, indent=2))
        if args.out:
            args.out.write_text(json.dumps(result, indent=2) + "\n")
    finally:
        procs.stop_all()


if __name__ == "__main__":
    main()
