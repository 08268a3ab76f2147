"""One devices schema: a plan file's `devices:` and a devices file take the same keys and give the same devices."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from gpumix.errors import GpumixError
from gpumix.hardware.discovery import read_this_machine
from gpumix.hardware.entries import DeviceEntry, devices_from_entries, load_devices_file
from gpumix.plan.fleet import build_devices
from gpumix.plan.spec import parse_plan_text_with_lines
from gpumix.units import GB, GiB
from gpumix.yaml_input import SourceLines

DEVICES = """\
- {gpu: RTX 4090, host: a, uuid: GPU-aaa, free_gib: 22, driver: "570.1", pcie_gen: 4, pcie_lanes: 8, socket: 1}
- {gpu: Fancy Card 9000, host: a, total_gb: 24, bandwidth_gbs: 700, fp16_tflops: 100, compute_capability: "8.9"}
- {gpu: RTX 3090, host: b, count: 2, free_gb: 20}
- {cpu: {ram_gib: 64, free_gb: 50, memory: DDR5-4800 8-channel, threads: 8}, host: b}
"""


def _summary(devices):
    return [(d.id, d.name, d.memory_total_bytes, d.memory_free_bytes, d.uuid, d.driver_version, d.pcie_width,
             d.spec.mem_bandwidth_gb_per_s, d.threads) for d in devices]  # fmt: skip


def test_a_plan_file_and_a_devices_file_give_the_same_devices(tmp_path):
    path = tmp_path / "devices.yaml"
    path.write_text(DEVICES)
    from_file = load_devices_file(path)
    plan_text = "devices:\n" + textwrap.indent(DEVICES, "  ") + "services:\n  - {name: s, model: llama-3.2-3b}\n"
    spec, lines = parse_plan_text_with_lines(plan_text, "plan.yaml")
    from_plan, sockets = build_devices(spec, "plan.yaml", lines)
    assert _summary(from_file) == _summary(from_plan)
    assert [d.id for d in from_plan] == ["a/gpu0", "a/gpu1", "b/gpu0", "b/gpu1", "b/cpu0"]
    first, custom, *_ = from_plan
    assert first.memory_free_bytes == 22 * GiB and first.uuid == "GPU-aaa" and first.pcie_width == 8
    assert custom.spec.id == "custom-fancy-card-9000" and custom.memory_total_bytes == 24 * GB
    assert from_plan[-1].memory_total_bytes == 64 * GiB and from_plan[-1].spec.mem_bandwidth_gb_per_s == 307.2
    assert sockets == {"a/gpu0": 1}


def test_a_cpu_without_ram_is_this_machine_only_where_the_caller_can_read_it(tmp_path):
    entries = [DeviceEntry.model_validate({"cpu": {}})]
    with pytest.raises(GpumixError, match=r"<plan>: devices\[0\]\.cpu\.ram_gb: ram_gb is required"):
        devices_from_entries(entries, "<plan>", SourceLines())  # a plan may be for another machine
    path = tmp_path / "d.yaml"
    path.write_text("- cpu: {}\n")
    (cpu,) = load_devices_file(path, read_this_machine)  # the CLI passes this machine's reader for a devices file
    assert cpu.kind == "cpu" and 0 < cpu.memory_free_bytes <= cpu.memory_total_bytes


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("{gpu: RTX 4090, free_gb: 1, free_gib: 1}", r"plan.yaml:2: devices\[0\]: give free_gb or free_gib, not both"),
        ("{gpu: RTX 4090, vram: 24}", r"plan.yaml:2: unknown key 'devices\[0\]\.vram'"),
        ("{gpu: RTX 4900}", r"plan.yaml:2: devices\[0\]\.gpu: unknown GPU 'RTX 4900'"),
        ("{gpu: RTX 4090, host: a/b}", r"plan.yaml:2: devices\[0\]\.host: String should match pattern"),
    ],
)
def test_plan_file_device_errors_name_file_line_and_field(item, message):
    with pytest.raises(GpumixError, match=message):
        spec, lines = parse_plan_text_with_lines(f"devices:\n  - {item}\nservices:\n  - {{name: s, model: gemma-3-1b}}\n",
                                                 "plan.yaml")  # fmt: skip
        build_devices(spec, "plan.yaml", lines)


def test_estimate_reads_a_devices_file(tmp_path):
    path = tmp_path / "devices.yaml"
    path.write_text("- gpu: RTX 3090\n- gpu: RTX 3060 12GB\n  free_gib: 11\n")
    run = subprocess.run([sys.executable, "-m", "gpumix", "estimate", "--devices-file", str(path), "-m", "llama-3.1-8b",
                          "-q", "q4_k_m", "--split", "layer", "--json"], capture_output=True, text=True, timeout=120)  # fmt: skip
    report = json.loads(run.stdout)
    assert [d["name"] for d in report["devices"]] == ["RTX 3090", "RTX 3060 12GB"]
    second = report["devices"][1]
    assert second["memory_free_bytes"] == 11 * GiB and second["memory_usable_bytes"] == 10 * GiB
    assert report["fits"] and run.returncode == 0
