"""The calibration file tune writes: round trip, merge, clear errors, and the estimator reading it."""

from __future__ import annotations

import json

import pytest

from gpumix.errors import GpumixError
from gpumix.tune.calibration_file import (
    DeviceCalibration,
    MachineCalibration,
    load_machine_calibration,
    save_machine_calibration,
)


def _cal(match: str, bw: float) -> MachineCalibration:
    dev = DeviceCalibration(match=match, name=match.split("[")[0], achieved_bandwidth_gb_per_s=bw,
                            per_token_overhead_s=0.002, measured={"tokens_per_s": 20.0})  # fmt: skip
    return MachineCalibration(method="test", devices=(dev,))


def test_round_trip_and_merge(tmp_path) -> None:
    path = tmp_path / "sub" / "calibration.json"
    save_machine_calibration(_cal("RPC0[127.0.0.1:1]", 9.0), path)
    save_machine_calibration(_cal("RPC1[127.0.0.1:2]", 3.0), path)  # another device: kept side by side
    save_machine_calibration(_cal("RPC0[127.0.0.1:1]", 8.0), path)  # same device: replaced
    cal = load_machine_calibration(path)
    assert {d.match: d.achieved_bandwidth_gb_per_s for d in cal.devices} == {"RPC1[127.0.0.1:2]": 3.0, "RPC0[127.0.0.1:1]": 8.0}
    raw = json.loads(path.read_text())
    assert raw["format_version"] == 1 and raw["host"] and raw["created"] and raw["method"] == "test"


def test_env_default_location(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("GPUMIX_CALIBRATION", str(tmp_path / "c.json"))
    written = save_machine_calibration(_cal("rtx-4090", 900.0))
    assert written == tmp_path / "c.json"
    assert load_machine_calibration().for_device("RTX-4090").achieved_bandwidth_gb_per_s == 900.0


def test_bad_files_are_clear_errors(tmp_path) -> None:
    with pytest.raises(GpumixError, match="does not exist"):
        load_machine_calibration(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(GpumixError, match="not valid JSON"):
        load_machine_calibration(bad)
    bad.write_text(json.dumps({"format_version": 1, "devices": [{"match": "x", "name": "x", "achieved_bandwidth_gb_per_s": -1, "per_token_overhead_s": 0}]}))
    with pytest.raises(GpumixError, match="achieved_bandwidth_gb_per_s"):
        load_machine_calibration(bad)
    bad.write_text(json.dumps({"format_version": 7, "devices": []}))
    with pytest.raises(GpumixError, match="format_version 7"):
        load_machine_calibration(bad)


def test_estimator_uses_the_measured_device(tmp_path) -> None:
    from gpumix.estimate.calibration import load_calibration
    from gpumix.estimate.speed import achieved_bandwidth_gb_per_s
    from gpumix.hardware.spec import Device, GpuSpec
    from gpumix.models.spec import QuantSpec

    path = save_machine_calibration(_cal("RPC0[127.0.0.1:1]", 7.5), tmp_path / "c.json")
    spec = GpuSpec(id="rpc0", name="RPC0[127.0.0.1:1]", arch="ggml-rpc", vram_bytes=2**34, mem_bandwidth_gb_per_s=50.0)
    device = Device(index=0, spec=spec, memory_total_bytes=2**34, memory_free_bytes=2**34)
    quant = QuantSpec(id="q4_k_m", bits_per_weight=4.89)
    assert achieved_bandwidth_gb_per_s(device, quant, load_calibration(path)) == pytest.approx(7.5)
