"""Markdown tables from results/latency.json and results/queue.json (pasted into RESULTS.md).

.venv/bin/python bench/gateway/render_tables.py
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).parent


def latency_tables(data: dict) -> str:
    lines = []
    for mode, title in (("json", "Non-streaming, time to last byte"), ("stream", "Streaming, time to first byte")):
        if mode not in data["results"]:
            continue
        lines += [f"**{title}** (ms; added = target − direct at the same percentile)", ""]
        lines += ["| rate req/s | target | ok / sent | p50 | p99 | added p50 | added p99 | errors |",
                  "| ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |"]  # fmt: skip
        for rate, by_target in data["results"][mode].items():
            added = data["added"].get(mode, {}).get(rate, {})
            for target, r in by_target.items():
                a = added.get(target, {})
                errors = ", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "0"
                lines.append(
                    f"| {rate} | {target} | {r['ok']} / {r['requests']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                    f"{a.get('added_p50_ms', 0):.2f} | {a.get('added_p99_ms', 0):.2f} | {errors} |"
                    if target != "direct"
                    else f"| {rate} | direct | {r['ok']} / {r['requests']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | – | – | {errors} |"
                )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    latency = HERE / "results/latency.json"
    if latency.exists():
        print(latency_tables(json.loads(latency.read_text())))
    queue = HERE / "results/queue.json"
    if queue.exists():
        print(json.dumps(json.loads(queue.read_text()), indent=2))


if __name__ == "__main__":
    main()
