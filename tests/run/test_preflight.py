"""Bad input is refused before anything starts, with every problem named."""

from __future__ import annotations

import socket

import psutil
import pytest
from typer.testing import CliRunner

from gpumix.errors import GpumixError
from gpumix.launch.commands import render_plan
from gpumix.plan.result import PlannedDevice
from gpumix.run.gpuinfo import GpuReading
from gpumix.run.preflight import device_problems, preflight
from gpumix.run.up import UpOptions, load_plan, run_foreground

GiB = 2**30


def _gpu_plan(cpu_demo_plan, planned_gib: float = 10, uuid: str | None = None):
    gpu = PlannedDevice(id="gpu0", index=0, name="RTX 4090", catalog_id="rtx-4090", kind="gpu", uuid=uuid, memory_total_bytes=24 * GiB,
                        memory_free_bytes=23 * GiB, memory_planned_bytes=int(planned_gib * GiB))  # fmt: skip
    chat = cpu_demo_plan.service("chat").model_copy(update={"devices": ["gpu0"]})
    return cpu_demo_plan.model_copy(update={"devices": [*cpu_demo_plan.devices, gpu], "services": [chat]})


def _reading(free_gib: float, index: int = 0, uuid: str = "GPU-aaa") -> GpuReading:
    return GpuReading(index, uuid, "NVIDIA GeForce RTX 4090", 24 * GiB, int(free_gib * GiB), 0, 0.0)


def test_plan_for_gpus_on_a_machine_without_them(cpu_demo_plan):
    problems = device_problems(_gpu_plan(cpu_demo_plan), None)
    assert problems == ["the plan uses GPU gpu0 (RTX 4090), but this machine has no NVIDIA GPU (NVML found no driver)"]


def test_gpu_missing_or_short_of_memory(cpu_demo_plan):
    plan = _gpu_plan(cpu_demo_plan, planned_gib=10)
    assert device_problems(plan, [_reading(12)]) == []
    [short] = device_problems(plan, [_reading(4)])
    assert "has 4.00 GiB free but the plan needs 10.00 GiB" in short
    [absent] = device_problems(_gpu_plan(cpu_demo_plan, uuid="GPU-bbb"), [_reading(20)])
    assert "GPU-bbb" in absent and "does not have" in absent


def test_every_problem_is_reported_at_once(cpu_demo_plan, tmp_path):
    chat = cpu_demo_plan.service("chat").model_copy(update={"model_path": str(tmp_path / "missing.gguf")})
    plan = cpu_demo_plan.model_copy(update={"services": [chat, cpu_demo_plan.service("embed")]})
    specs = render_plan(plan, base_port=47000)
    specs[1] = specs[1].model_copy(update={"argv": ["/nonexistent/llama-server", *specs[1].argv[1:]]})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(GpumixError) as err:
            preflight(plan, specs, front_port=port, gpus=None)
    text = err.value.message
    assert "nothing was started" in text and "\n" not in text and "(1) " in text and "(3) " in text
    assert f"model file {tmp_path / 'missing.gguf'} does not exist (check the service's file: in the plan file)" in text
    assert "engine binary /nonexistent/llama-server does not exist" in text
    assert f"front port {port} is already in use" in text


def test_up_refuses_a_gpu_plan_here_and_starts_nothing(cpu_demo_plan, tmp_path):
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(_gpu_plan(cpu_demo_plan).model_dump_json())
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    from gpumix.cli.main import app

    result = CliRunner().invoke(app, ["up", str(plan_path), "--run-dir", str(tmp_path / "run"), "--detach"])
    assert result.exit_code != 0
    assert isinstance(result.exception, GpumixError) and "GPU gpu0 (RTX 4090)" in result.exception.message
    assert {p.pid for p in psutil.Process().children(recursive=True)} == before
    assert not (tmp_path / "run" / "state.json").exists()


def test_front_port_taken_refuses_foreground_up(cpu_demo_plan, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(GpumixError, match=f"front port {port} is already in use"):
            run_foreground(cpu_demo_plan, UpOptions(run_dir=tmp_path, front_port=port))
    assert not (tmp_path / "state.json").exists()


def test_load_plan_errors(tmp_path):
    with pytest.raises(GpumixError, match="does not exist"):
        load_plan(tmp_path / "nope.json")
    bad = tmp_path / "plan.json"
    bad.write_text('{"feasible": true}')
    with pytest.raises(GpumixError, match="is not a gpumix plan.json"):
        load_plan(bad)
    bad.write_text('{"format_version": 2, "feasible": true}')
    with pytest.raises(GpumixError, match="not a valid plan.json: devices"):
        load_plan(bad)
