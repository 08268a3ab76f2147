"""Do the shipped examples plan the same before and after a change?

    python scripts/compare_example_plans.py save /tmp/before      # on the old code: every examples/*.yaml → JSON
    python scripts/compare_example_plans.py compare /tmp/before   # on the new code: same decisions and numbers?

Compares what a plan decides (feasible, reasons, cost, warning codes; per service: engine, mode, devices, layers,
-ts, memory, predictions, SLOs; per device: planned memory, utilisation, price). Devices are compared by their
plan-wide id (`gpu0`, `HOST/gpu0`), so plans of format 1 (bare indices) and 2 (ids) compare alike; keys added to a
nested mapping since the save (a new `predicted` field) are not differences. Exit 1 when any example differs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SERVICE_KEYS = ("name", "engine", "mode", "layers", "tensor_split", "memory_bytes", "predicted", "slo", "n_gpu_layers",
                "replicas", "gbp_per_million_tokens")  # fmt: skip


def plan_json(path: Path) -> dict[str, Any]:
    run = subprocess.run([sys.executable, "-m", "gpumix", "plan", str(path), "--json"], capture_output=True, text=True,
                         cwd=ROOT, check=True)  # fmt: skip
    return json.loads(run.stdout)


def _device_id(dev: dict[str, Any]) -> str:
    if dev.get("id"):
        return dev["id"]
    local = f"gpu{dev['index']}" if dev["index"] >= 0 else f"cpu{-dev['index'] - 1}"
    return f"{dev['host']}/{local}" if dev.get("host") else local


def _service_devices(plan: dict[str, Any], svc: dict[str, Any]) -> list[str]:
    if plan.get("format_version", 1) >= 2:
        return svc["devices"]
    ids = []
    for index in svc["devices"]:
        found = [d for d in plan["devices"] if d["index"] == index and (svc["host"] is None or d["host"] == svc["host"])]
        ids.append(_device_id(found[0]) if len(found) == 1 else f"?{index}")
    return ids


def decisions(plan: dict[str, Any]) -> dict[str, Any]:
    return {
        "feasible": plan["feasible"], "optimal": plan["optimal"], "reasons": plan["reasons"], "cost": plan["cost"],
        "warnings": sorted(w["code"] for w in plan["warnings"]),
        "devices": [(_device_id(d), d["name"], d["memory_planned_bytes"], d["bandwidth_utilisation"],
                     d["compute_utilisation"], d["gbp_per_month"]) for d in plan["devices"]],
        "services": [{k: s[k] for k in SERVICE_KEYS} | {"devices": _service_devices(plan, s)} for s in plan["services"]],
    }  # fmt: skip


def differences(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    out = []
    for key in before:
        if key == "services":
            for old, new in zip(before[key], after[key], strict=False):
                changed = {k: (old[k], new[k]) for k in old if _known(old[k], new[k]) != old[k]}
                if changed:
                    out.append(f"service {old['name']}: {changed}")
            if len(before[key]) != len(after[key]):
                out.append(f"{len(before[key])} services before, {len(after[key])} after")
        elif before[key] != after[key]:
            out.append(f"{key}: {before[key]} → {after[key]}")
    return out


def _known(old: Any, new: Any) -> Any:
    """`new` without the keys of a nested mapping that `old` does not have: a field added since the save (e.g. a new
    `predicted` entry) is not a different decision."""
    if isinstance(old, dict) and isinstance(new, dict):
        return {k: _known(old[k], new[k]) if k in old else None for k in new if k in old}
    return new


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("save", "compare"))
    parser.add_argument("directory", type=Path)
    args = parser.parse_args()
    args.directory.mkdir(parents=True, exist_ok=True)
    different = 0
    for example in sorted((ROOT / "examples").glob("*.yaml")):
        saved = args.directory / f"{example.stem}.json"
        plan = plan_json(example)
        if args.action == "save":
            saved.write_text(json.dumps(plan, indent=2))
            continue
        if not saved.is_file():
            print(f"{example.stem}: new (not in {args.directory})")
            continue
        diffs = differences(decisions(json.loads(saved.read_text())), decisions(plan))
        different += bool(diffs)
        print(f"{example.stem}: {'same' if not diffs else 'DIFFERENT'}")
        for line in diffs:
            print(f"  {line}")
    return 1 if different else 0


if __name__ == "__main__":
    sys.exit(main())
