"""Calibration files: the tune round trip, merge, format_version checks, clear errors, which file a command
uses (with the environment and home directory injected), and the estimator reading the result."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gpumix.calibrate.files import (
    ENV_CALIBRATION,
    FORMAT_VERSION,
    DeviceCalibration,
    MachineCalibration,
    load_calibration,
    load_machine_calibration,
    machine_calibration_path,
    resolve_calibration_path,
    save_machine_calibration,
)
from gpumix.errors import GpumixError
from gpumix.estimate.calibration import CALIBRATION_FORMAT_VERSION, check_format_version, default_calibration


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
    # What the estimator gets from the same file: the packaged fit plus these two devices' measurements.
    full = load_calibration(path)
    assert full.backends == default_calibration().backends
    assert {m.match: m.achieved_bandwidth_gb_per_s for m in full.measurements} == {
        "RPC1[127.0.0.1:2]": 3.0, "RPC0[127.0.0.1:1]": 8.0,
    }  # fmt: skip
    assert all(m.per_token_overhead_s == 0.002 for m in full.measurements)


def test_env_default_location(tmp_path) -> None:
    environ, home = {ENV_CALIBRATION: str(tmp_path / "c.json")}, tmp_path / "home"
    written = save_machine_calibration(_cal("rtx-4090", 900.0), machine_calibration_path(None, environ, home))
    assert written == tmp_path / "c.json"
    resolved = resolve_calibration_path(None, environ, home)
    assert load_machine_calibration(resolved).for_device("RTX-4090").achieved_bandwidth_gb_per_s == 900.0


def test_resolution_order_explicit_then_env_then_home_then_packaged(tmp_path) -> None:
    home = tmp_path / "home"
    home_file = home / ".config" / "gpumix" / "calibration.json"
    env_file, explicit = tmp_path / "env.json", tmp_path / "explicit.json"
    assert machine_calibration_path(None, {}, home) == home_file  # where tune writes by default
    assert resolve_calibration_path(None, {}, home) is None  # nothing anywhere: the packaged fit alone
    save_machine_calibration(_cal("rtx-4090", 1.0), home_file)
    assert resolve_calibration_path(None, {}, home) == home_file
    assert resolve_calibration_path(None, {ENV_CALIBRATION: ""}, home) == home_file  # empty = unset
    save_machine_calibration(_cal("rtx-4090", 2.0), env_file)
    assert resolve_calibration_path(None, {ENV_CALIBRATION: str(env_file)}, home) == env_file
    assert resolve_calibration_path(explicit, {ENV_CALIBRATION: str(env_file)}, home) == explicit
    # The packaged fit, untouched, when no file applies.
    assert load_calibration(None) == default_calibration()
    assert load_calibration(None).measurements == ()


def test_a_name_that_points_nowhere_is_an_error_not_a_silent_fallback(tmp_path) -> None:
    home = tmp_path / "home"
    save_machine_calibration(_cal("rtx-4090", 1.0), home / ".config" / "gpumix" / "calibration.json")
    with pytest.raises(GpumixError, match=r"\$GPUMIX_CALIBRATION names .*gone\.json, which does not exist") as err:
        resolve_calibration_path(None, {ENV_CALIBRATION: str(tmp_path / "gone.json")}, home)
    assert "unset GPUMIX_CALIBRATION" in err.value.hint
    missing = tmp_path / "missing.json"
    assert resolve_calibration_path(missing, {}, home) == missing  # explicit: the loader says it is missing
    with pytest.raises(GpumixError, match=f"calibration file {missing} does not exist") as err:
        load_calibration(missing)
    assert "gpumix tune" in err.value.hint
    with pytest.raises(GpumixError, match="is a directory"):
        load_calibration(tmp_path)


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
    bad.write_text(json.dumps({"format_version": 1, "devices": [{"match": "x", "name": "x", "typo": 1,
                                                                 "achieved_bandwidth_gb_per_s": 1, "per_token_overhead_s": 0}]}))  # fmt: skip
    with pytest.raises(GpumixError, match=r"field 'devices\.0\.typo'"):
        load_machine_calibration(bad)
    bad.write_text(json.dumps([1, 2]))
    with pytest.raises(GpumixError, match="missing field 'devices'"):
        load_calibration(bad)


@pytest.mark.parametrize(
    ("version", "message", "hint"),
    [
        (7, "format_version 7 is newer than this gpumix reads (1)", "upgrade gpumix"),
        (0, "format_version 0 is older than this gpumix reads (1)", "re-run `gpumix tune`"),
        ("1", "format_version '1' is not a version number", "re-run `gpumix tune`"),
        (None, "format_version None is not a version number", "re-run `gpumix tune`"),
        ("missing", "missing field 'format_version'", "re-run `gpumix tune`"),
    ],
)
def test_format_version_mismatch_is_one_line_naming_file_and_field(tmp_path, version, message, hint) -> None:
    path = tmp_path / "calibration.json"
    data = _cal("rtx-4090", 900.0).model_dump()
    if version == "missing":
        del data["format_version"]
    else:
        data["format_version"] = version
    path.write_text(json.dumps(data))
    for reader in (load_machine_calibration, load_calibration):  # the same check on both ways in
        with pytest.raises(GpumixError) as err:
            reader(path)
        assert err.value.message.startswith(f"{path}: ") and message in err.value.message
        assert "\n" not in err.value.message and hint in err.value.hint


def test_a_fitted_calibration_file_replaces_the_packaged_fit(tmp_path) -> None:
    """`python -m gpumix.calibrate.fit -o FILE` writes a whole calibration; --calibration FILE then uses it."""
    refit = default_calibration().model_copy(update={"hbm_bandwidth_factor": 0.5, "method": "a refit"})
    path = tmp_path / "refit.json"
    path.write_text(refit.model_dump_json())
    assert load_calibration(path) == refit
    data = json.loads(path.read_text()) | {"format_version": CALIBRATION_FORMAT_VERSION + 1}
    path.write_text(json.dumps(data))
    with pytest.raises(GpumixError, match=rf"refit\.json: format_version {CALIBRATION_FORMAT_VERSION + 1} is newer"):
        load_calibration(path)
    path.write_text(json.dumps(json.loads(refit.model_dump_json()) | {"backendz": {}}))
    with pytest.raises(GpumixError, match=r"refit\.json: field 'backendz'"):
        load_calibration(path)


def test_the_packaged_fit_carries_the_version_this_gpumix_reads() -> None:
    assert default_calibration().format_version == CALIBRATION_FORMAT_VERSION
    assert _cal("x", 1.0).format_version == FORMAT_VERSION  # what tune writes is what it reads
    check_format_version({"format_version": CALIBRATION_FORMAT_VERSION}, CALIBRATION_FORMAT_VERSION, "x", "h")
    with pytest.raises(GpumixError, match="packaged: format_version 2 is newer"):
        check_format_version({"format_version": 2}, 1, "packaged", "reinstall gpumix")


def test_estimator_uses_the_measured_device(tmp_path) -> None:
    from gpumix.estimate.speed import achieved_bandwidth_gb_per_s
    from gpumix.hardware.spec import Device, GpuSpec
    from gpumix.models.spec import QuantSpec

    path = save_machine_calibration(_cal("RPC0[127.0.0.1:1]", 7.5), tmp_path / "c.json")
    spec = GpuSpec(id="rpc0", name="RPC0[127.0.0.1:1]", arch="ggml-rpc", vram_bytes=2**34, mem_bandwidth_gb_per_s=50.0)
    device = Device(index=0, spec=spec, memory_total_bytes=2**34, memory_free_bytes=2**34)
    quant = QuantSpec(id="q4_k_m", bits_per_weight=4.89)
    assert achieved_bandwidth_gb_per_s(device, quant, load_calibration(path)) == pytest.approx(7.5)


# ---------------------------------------------------------------------------------------------- through the CLI

ESTIMATE = ("estimate", "--gpu", "RTX 4090", "--model", "llama-3-8b", "--quant", "q4_k_m", "--json")


def _gpumix(*args: str, home: Path, env_file: Path | None = None) -> subprocess.CompletedProcess[str]:
    import os

    env = {k: v for k, v in os.environ.items() if k != ENV_CALIBRATION} | {"HOME": str(home)}
    if env_file is not None:
        env[ENV_CALIBRATION] = str(env_file)
    return subprocess.run([sys.executable, "-m", "gpumix", *args], capture_output=True, text=True, timeout=120,
                          env=env)  # fmt: skip


def _decode(out: subprocess.CompletedProcess[str]) -> float:
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["predicted"]["decode_tokens_per_s"]


def test_cli_resolves_explicit_env_and_home_files(tmp_path) -> None:
    """`gpumix estimate` predicts with the file the rule picks: a 4090 measured at 100 GB/s decodes ~9x slower."""
    home = tmp_path / "home"
    packaged = _decode(_gpumix(*ESTIMATE, home=home))
    save_machine_calibration(_cal("rtx-4090", 100.0), home / ".config" / "gpumix" / "calibration.json")
    from_home = _decode(_gpumix(*ESTIMATE, home=home))
    assert from_home < packaged / 4
    env_file = save_machine_calibration(_cal("rtx-4090", 200.0), tmp_path / "env.json")
    from_env = _decode(_gpumix(*ESTIMATE, home=home, env_file=env_file))
    assert from_home < from_env < packaged / 2
    explicit = save_machine_calibration(_cal("rtx-4090", 400.0), tmp_path / "explicit.json")
    from_explicit = _decode(_gpumix(*ESTIMATE, "--calibration", str(explicit), home=home, env_file=env_file))
    assert from_env < from_explicit < packaged


def test_cli_plan_records_the_calibration_file_and_uses_it(tmp_path) -> None:
    plan_file = tmp_path / "p.yaml"
    plan_file.write_text("devices: [{gpu: RTX 4090}]\nservices:\n  - {name: chat, model: llama-3-8b, quant: q4_k_m}\n")
    home = tmp_path / "home"
    packaged = json.loads(_gpumix("plan", str(plan_file), "--json", home=home).stdout)
    assert packaged["calibration"] is None
    cal = save_machine_calibration(_cal("rtx-4090", 100.0), tmp_path / "cal.json")
    out = _gpumix("plan", str(plan_file), "--json", "--calibration", str(cal), home=home)
    assert out.returncode == 0, out.stderr
    tuned = json.loads(out.stdout)
    assert tuned["calibration"] == str(cal)
    before, after = (p["services"][0]["predicted"]["decode_tokens_per_s"] for p in (packaged, tuned))
    assert after < before / 4


def test_cli_bad_calibration_is_a_clear_error_without_traceback(tmp_path) -> None:
    bad = tmp_path / "cal.json"
    bad.write_text(json.dumps({"format_version": 9, "devices": []}))
    for command in (ESTIMATE, ("validate", str(tmp_path / "m.csv"))):
        out = _gpumix(*command, "--calibration", str(bad), home=tmp_path)
        assert out.returncode == 2 and "Traceback" not in out.stderr
        text = " ".join(out.stderr.split())  # (line wrapping of long errors is fixed with the CLI's error printing)
        assert f"{bad}: format_version 9 is newer than this gpumix reads (1)" in text
    missing = tmp_path / "nope.json"
    out = _gpumix(*ESTIMATE, "--calibration", str(missing), home=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"calibration file {missing} does not exist" in " ".join(out.stderr.split())


def test_up_and_export_plan_a_yaml_with_the_resolved_calibration(tmp_path, monkeypatch) -> None:
    """`gpumix up/export FILE.yaml` plan first, with the calibration the rule picks; a plan.json is already
    planned, so an explicit --calibration there is refused rather than silently ignored."""
    from gpumix.cli.calibration_option import plan_calibration
    from gpumix.run.up import load_plan

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(ENV_CALIBRATION, raising=False)
    yaml_file = tmp_path / "p.yaml"
    yaml_file.write_text("devices: [{gpu: RTX 4090}]\nservices:\n  - {name: chat, model: llama-3-8b, quant: q4_k_m}\n")
    assert plan_calibration(yaml_file, None) == (default_calibration(), None)
    cal_file = save_machine_calibration(_cal("rtx-4090", 100.0), tmp_path / "cal.json")
    monkeypatch.setenv(ENV_CALIBRATION, str(cal_file))
    cal, name = plan_calibration(yaml_file, None)
    assert name == str(cal_file) and cal.measurements[0].achieved_bandwidth_gb_per_s == 100.0
    tuned, packaged = load_plan(yaml_file, cal, name), load_plan(yaml_file)
    assert tuned.calibration == str(cal_file) and packaged.calibration is None
    assert tuned.service("chat").predicted.decode_tokens_per_s < packaged.service("chat").predicted.decode_tokens_per_s / 4
    plan_json = tmp_path / "plan.json"
    plan_json.write_text(tuned.model_dump_json())
    assert plan_calibration(plan_json, None) == (None, None)
    with pytest.raises(GpumixError, match="--calibration applies to a plan file"):
        plan_calibration(plan_json, cal_file)
