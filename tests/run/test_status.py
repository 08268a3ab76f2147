from __future__ import annotations

from gpumix.plan.result import Plan, PlannedDevice, PlannedService
from gpumix.run.status import DeviceReport, imbalance_advice


def _split_plan() -> Plan:
    devs = [PlannedDevice(id=f"gpu{i}", index=i, name=n, catalog_id=n, kind="gpu", memory_total_bytes=1, memory_free_bytes=1,
                          memory_planned_bytes=1) for i, n in ((0, "RTX 4090"), (1, "RTX 3090"))]  # fmt: skip
    svc = PlannedService(name="big", model="m", quant="q4_k_m", engine="llama.cpp", mode="layer_split", devices=["gpu0", "gpu1"],
                         tensor_split=[40, 40])  # fmt: skip
    return Plan(feasible=True, devices=devs, services=[svc])


def _util(a: float, b: float) -> list[DeviceReport]:
    return [DeviceReport("gpu0", "RTX 4090", "gpu", 0, 1, a, "nvml"), DeviceReport("gpu1", "RTX 3090", "gpu", 0, 1, b, "nvml")]


def test_busy_and_idle_devices_of_a_split_get_advice_toward_the_idle_one():
    [advice] = imbalance_advice(_split_plan(), _util(5, 95))
    assert "device gpu1 (RTX 3090) is 95% busy" in advice and "shift the split toward device gpu0" in advice


def test_balanced_or_quiet_splits_get_no_advice():
    assert imbalance_advice(_split_plan(), _util(70, 80)) == []
    assert imbalance_advice(_split_plan(), _util(2, 3)) == []  # idle service: nothing to learn
    single = _split_plan().model_copy(update={"services": [_split_plan().services[0].model_copy(update={"mode": "single", "devices": ["gpu0"]})]})
    assert imbalance_advice(single, _util(5, 95)) == []
