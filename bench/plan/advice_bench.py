"""How much planning time advice (gpumix.plan.advice) adds: each example planned with and without `advise`.

    .venv/bin/python bench/plan/advice_bench.py            # prints one line per case (best of 3 runs)

Cases: examples/3090-3060-70b.yaml (one unplaceable 70B, 2 cards) and examples/fleet.yaml plus a service no host can
hold (a 70B at f16: 21 services, 4 hosts). The numbers in docs/plan-file.md ("Advice") came from this script.
"""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from gpumix.plan.planner import plan_services
from gpumix.plan.spec import PlanSpec, parse_plan_text

ROOT = Path(__file__).resolve().parents[2]


def _cases() -> dict[str, PlanSpec]:
    fleet = yaml.safe_load((ROOT / "examples" / "fleet.yaml").read_text())
    fleet["services"].append({"name": "huge", "model": "llama-3.3-70b", "quant": "f16"})
    return {
        "3090-3060-70b": parse_plan_text((ROOT / "examples" / "3090-3060-70b.yaml").read_text()),
        "fleet + unplaceable 70B f16": parse_plan_text(yaml.safe_dump(fleet)),
    }


def _best_of(runs: int, spec: PlanSpec, advise: bool) -> tuple[float, int]:
    best, count = float("inf"), 0
    for _ in range(runs):
        start = time.perf_counter()
        plan = plan_services(spec, advise=advise)
        best = min(best, time.perf_counter() - start)
        count = len(plan.suggestions)
    return best, count


def main() -> None:
    for name, spec in _cases().items():
        plan_services(spec, advise=False)  # warm the catalogs
        without, _ = _best_of(3, spec, advise=False)
        with_advice, count = _best_of(3, spec, advise=True)
        per = (with_advice - without) / count if count else 0.0
        print(f"{name}: {without:.3f} s without advice, {with_advice:.3f} s with {count} suggestions "
              f"({per * 1000:.0f} ms per re-plan)")  # fmt: skip


if __name__ == "__main__":
    main()
