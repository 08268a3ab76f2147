"""Helpers shared by the run tests (a module with a unique name, so tests can import it)."""

from __future__ import annotations

import sys
from pathlib import Path

from gpumix.launch.spec import LaunchSpec
from gpumix.netutil import free_port
from gpumix.plan.result import Plan, PlannedDevice, PlannedService

DATA = Path(__file__).parent / "data"
EXAMPLES = Path(__file__).parents[2] / "examples"
FAKE_ENGINE = Path(__file__).parent / "fake_engine.py"


def fake_plan(names: list[str]) -> Plan:
    cpu = PlannedDevice(id="cpu0", index=-1, name="Host CPU", catalog_id="cpu", kind="cpu", memory_total_bytes=2**33,
                        memory_free_bytes=2**32, memory_planned_bytes=0)  # fmt: skip
    services = [PlannedService(name=n, model="fake", quant="none", engine="llama.cpp", mode="single", devices=["cpu0"]) for n in names]
    return Plan(feasible=True, devices=[cpu], services=services)


def fake_spec(name: str, *flags: str) -> LaunchSpec:
    port = free_port()
    return LaunchSpec(service=name, engine="llama.cpp", argv=[sys.executable, str(FAKE_ENGINE), str(port), *flags],
                      env={"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": ""}, port=port,
                      health_path="/health")  # fmt: skip
