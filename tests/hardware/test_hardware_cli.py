"""`gpumix devices` and `gpumix gpus`: JSON shape, tables, and the no-driver exit."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from gpumix.cli.main import app
from gpumix.units import GB, GiB

runner = CliRunner(env={"COLUMNS": "220"})  # wide enough that rich does not wrap names


def test_gpus_json_lists_the_catalog():
    result = runner.invoke(app, ["gpus", "--json"])
    assert result.exit_code == 0, result.output
    cards = json.loads(result.output)
    assert len(cards) >= 74 + 8
    rtx4090 = next(c for c in cards if c["id"] == "rtx-4090")
    assert rtx4090["vram_bytes"] == 24 * GiB and rtx4090["mem_bandwidth_gb_per_s"] == 1008
    assert rtx4090["source"] and isinstance(rtx4090["aliases"], list)
    assert all(c["kind"] == "gpu" for c in cards)


def test_gpus_query_and_table():
    result = runner.invoke(app, ["gpus", "H100", "--json"])
    assert {c["name"] for c in json.loads(result.output)} == {"H100 PCIe 80GB", "H100 SXM 80GB"}
    table = runner.invoke(app, ["gpus", "5060"])
    assert table.exit_code == 0 and "5060 Ti" in table.output
    assert "DDR5" in runner.invoke(app, ["gpus", "--cpu"]).output


def test_devices_from_a_file_json_shape(tmp_path):
    path = tmp_path / "devices.yaml"
    path.write_text(
        textwrap.dedent("""\
        - gpu: RTX 4090
        - gpu: RTX 5060 Ti 16GB
          free_gb: 14
        - cpu: {ram_gb: 64, bandwidth_gbs: 51.2, threads: 4}
        """)
    )
    result = runner.invoke(app, ["devices", "--devices-file", str(path), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["source"] == f"file:{path}" and report["index_order"] == "PCI_BUS_ID"
    names = [(d["index"], d["name"], d["catalog_id"], d["kind"]) for d in report["devices"]]
    assert names[:2] == [(0, "RTX 4090", "rtx-4090", "gpu"), (1, "RTX 5060 Ti 16GB", "rtx-5060-ti-16gb", "gpu")]
    assert names[2][0] == -1 and names[2][3] == "cpu"
    assert report["devices"][1]["memory_free_bytes"] == 14 * GB
    assert report["devices"][1]["pcie_width"] == 8
    expected_keys = {"index", "name", "kind", "catalog_id", "memory_total_bytes", "memory_free_bytes", "uuid",
                     "pcie_gen", "pcie_width", "mem_bandwidth_gb_per_s", "compute_capability", "host"}  # fmt: skip
    assert expected_keys <= set(report["devices"][0])
    table = runner.invoke(app, ["devices", "--devices-file", str(path)])
    assert table.exit_code == 0 and "RTX 4090" in table.output and "PCI_BUS_ID" in table.output


def test_devices_with_fake_nvml_shows_topology(monkeypatch, nvml_fakes):
    fake = nvml_fakes.fake_pynvml(nvml_fakes.HYBRID[:2], topology={(0, 1): 10})
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    result = runner.invoke(app, ["devices", "--json"])
    report = json.loads(result.output)
    assert report["source"] == "nvml" and report["driver_version"] == "570.86.15"
    assert report["links"] == [{"a": 0, "b": 1, "topology": "PIX", "nvlink_count": 0}]
    table = runner.invoke(app, ["devices"])
    assert "topology" in table.output and "PIX" in table.output


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpumix", *args], capture_output=True, text=True, timeout=60)


def test_devices_without_driver_exits_non_zero_with_a_hint():
    import pynvml

    try:
        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        pytest.skip("this machine has an NVIDIA driver")
    except pynvml.NVMLError:
        pass
    result = _run_cli("devices")
    assert result.returncode == 2
    assert "no NVIDIA driver found" in result.stderr and "--devices-file" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_devices_file_is_one_line_error(tmp_path):
    path = tmp_path / "d.yaml"
    path.write_text("- gpu: RTX 4900\n")
    result = _run_cli("devices", "--devices-file", str(path))
    assert result.returncode == 2
    assert "devices[0].gpu: unknown GPU 'RTX 4900'" in result.stderr.replace("\n", "")
    assert "Traceback" not in result.stderr
