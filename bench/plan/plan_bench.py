"""Planning-speed benchmark: `.venv/bin/python bench/plan/plan_bench.py [--quick]`. Results go in
docs/plan-benchmark.md.

Times `plan_file` on the 2-GPU hybrid box and `plan_services` on synthetic fleets of 8-GPU hosts (mixed
cards, mixed services) from 4 to 128 hosts. Median of repeats; wall-clock on whatever machine runs it. Plans with
the packaged calibration (no machine calibration file), so results do not depend on who runs it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from gpumix.estimate.calibration import default_calibration
from gpumix.plan.planner import plan_file, plan_services
from gpumix.plan.spec import DeviceEntry, PlanSpec, ServiceEntry

HOST_MIXES = (
    ["RTX 4090"] * 8,
    ["RTX 3090"] * 4 + ["RTX 3060 12GB"] * 4,
    ["RTX 5090"] * 2 + ["RTX 5060 Ti 16GB"] * 6,
    ["H100 PCIe"] * 8,
)
SERVICE_MIX = (
    ("llama-3.3-70b", "q4_k_m"), ("llama-3.1-8b", "q4_k_m"), ("qwen2.5-coder-32b", "q4_k_m"),
    ("gemma-3-12b", "q4_k_m"), ("mistral-7b", "q4_k_m"), ("gemma-3-4b", "q4_k_m"), ("sdxl", None),
    ("whisper-large-v3", None), ("bge-m3", None), ("bge-reranker-v2-m3", None),
)  # fmt: skip
ROOT = Path(__file__).resolve().parents[2]  # the repository


def fleet_spec(n_hosts: int, n_services: int) -> PlanSpec:
    devices = []
    for h in range(n_hosts):
        for name in HOST_MIXES[h % len(HOST_MIXES)]:
            devices.append(DeviceEntry(gpu=name, host=f"host-{h:03d}"))
    services = []
    for i in range(n_services):
        model, quant = SERVICE_MIX[i % len(SERVICE_MIX)]
        services.append(ServiceEntry(name=f"svc-{i:03d}", model=model, quant=quant, context=8192 if quant else None))
    return PlanSpec(devices=devices, services=services)


def _time(fn, repeats: int) -> tuple[float, float, object]:
    """Median wall-clock and CPU seconds (CPU time is what a shared, loaded machine does not inflate)."""
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - start_cpu)
    return statistics.median(walls), statistics.median(cpus), result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="only the small cases")
    args = parser.parse_args(argv)
    cal = default_calibration()
    hybrid = ROOT / "examples" / "hybrid-box.yaml"
    plan_file(hybrid)  # warm caches (catalog CSV, calibration JSON)
    wall, cpu, plan = _time(lambda: plan_file(hybrid), 5)
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print("| case | GPUs | services | solver | wall s | CPU s | optimal | feasible |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| hybrid-box.yaml (file → plan) | 2 | 6 | {plan.solver} | {wall:.3f} | {cpu:.3f} | {plan.optimal} | "
          f"{plan.feasible} |")  # fmt: skip
    cases = [(4, 20), (16, 64)] if args.quick else [(4, 20), (16, 64), (64, 128), (128, 256)]
    for hosts, services in cases:
        spec = fleet_spec(hosts, services)
        wall, cpu, plan = _time(lambda spec=spec: plan_services(spec, calibration=cal), 1 if hosts >= 64 else 3)
        print(f"| fleet {hosts} hosts | {hosts * 8} | {services} | {plan.solver} | {wall:.3f} | {cpu:.3f} | "
              f"{plan.optimal} | {plan.feasible} |")  # fmt: skip


if __name__ == "__main__":
    main()
