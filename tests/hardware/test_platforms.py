"""Host platforms: the CPU and board catalogs, name resolution, RAM bandwidth from type x channels, board slots, and
the `cpu:` entry that brings them into a plan."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from gpumix.errors import GpumixError
from gpumix.hardware.discovery import read_this_machine
from gpumix.hardware.entries import (
    DevicesList,
    ThisMachine,
    devices_from_entries,
    load_devices_file,
    this_machine_cpu_device,
)
from gpumix.hardware.platforms import (
    BOARD_CATALOG_PATH,
    CPU_CATALOG_PATH,
    all_boards,
    all_cpus,
    board_slots,
    cpu_from_os_name,
    ram_config,
    resolve_board,
    resolve_cpu,
)
from gpumix.units import GB
from gpumix.yaml_input import read_yaml_with_lines

DATA_README = Path(CPU_CATALOG_PATH).parent / "README.md"


def _header(path: Path) -> list[str]:
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    return next(csv.reader(lines))


def test_every_catalog_row_has_a_source_and_every_column_is_documented():
    readme = DATA_README.read_text()
    for path, rows in ((CPU_CATALOG_PATH, all_cpus()), (BOARD_CATALOG_PATH, all_boards())):
        assert len({r.id for r in rows}) == len(rows) >= 15
        assert all(len(r.source) > 40 and ("http" in r.source or "apple.com" in r.source) for r in rows)
        for column in _header(Path(path)):
            assert f"`{column}`" in readme, f"{Path(path).name} column {column} is not documented in data/README.md"
    vendors = {c.vendor for c in all_cpus()}
    assert {"AMD", "Intel", "Apple"} <= vendors
    families = " ".join(c.name for c in all_cpus())
    for kind in ("Threadripper", "EPYC", "Xeon", "Ryzen", "Core", "Apple M"):
        assert kind in families


def test_names_resolve_forgivingly_and_refuse_ambiguity():
    assert resolve_cpu("5800X").name == resolve_cpu("AMD Ryzen 7 5800X").name == "Ryzen 7 5800X"
    assert resolve_cpu("5800X3D").name == "Ryzen 7 5800X3D"  # one word more is another CPU
    assert resolve_cpu("i9-13900KF").name == resolve_cpu("13900K").name == "Core i9-13900K"
    assert resolve_cpu("285K").name == "Core Ultra 9 285K"
    assert resolve_cpu("M2").name == "Apple M2"
    with pytest.raises(GpumixError, match=r"ambiguous.*M3 Max \(14-core CPU\).*M3 Max \(16-core CPU\)"):
        resolve_cpu("M3 Max")
    with pytest.raises(GpumixError, match=r"unknown CPU '5800Y'; closest: .*5800X"):
        resolve_cpu("5800Y")


@pytest.mark.parametrize(("os_name", "expected"), [
    ("AMD Ryzen 7 5800X 8-Core Processor", "Ryzen 7 5800X"),
    ("12th Gen Intel(R) Core(TM) i5-12600KF", "Core i5-12600K"),
    ("Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz", "Xeon Gold 6338"),
    ("AMD Ryzen 7 5700G with Radeon Graphics", "Ryzen 7 5700G"),
    ("AMD EPYC", None),  # a VM hiding the model: not guessed
])  # fmt: skip
def test_os_cpu_names_map_to_catalog_rows(os_name, expected):
    found = cpu_from_os_name(os_name)
    assert (found.name if found else None) == expected


def test_ram_bandwidth_is_channels_times_rate_times_8_bytes():
    r7 = resolve_cpu("Ryzen 7 5800X")
    ram, notes = ram_config(r7, "DDR4-3600", 2)
    assert ram is not None and ram.theoretical_gb_per_s == pytest.approx(2 * 3600 * 8 / 1000) == 57.6
    assert any("above the official DDR4-3200" in n for n in notes)  # an XMP profile, said out loud
    default, notes = ram_config(r7, None, None)
    assert default is not None and default.label == "DDR4-3200 x2" and len(notes) == 2
    epyc, _ = ram_config(resolve_cpu("EPYC 9654"), None, None)
    assert epyc is not None and epyc.theoretical_gb_per_s == pytest.approx(12 * 4800 * 8 / 1000)
    m2max, _ = ram_config(resolve_cpu("Apple M2 Max"), None, None)
    assert m2max is not None and m2max.theoretical_gb_per_s == pytest.approx(409.6)  # Apple: "400GB/s"
    bare, _ = ram_config(None, "DDR5-6000", None)
    assert bare is not None and bare.theoretical_gb_per_s == 96.0
    with pytest.raises(GpumixError, match="does not take DDR5"):
        ram_config(r7, "DDR5-6000", 2)
    with pytest.raises(GpumixError, match="2 memory channels, not 4"):
        ram_config(r7, "DDR4-3600", 4)
    with pytest.raises(GpumixError, match="soldered"):
        ram_config(resolve_cpu("Apple M2 Max"), "LPDDR5-8533", None)
    assert ram_config(None, None, None) == (None, [])


def test_board_slots_follow_the_chipset_and_the_cpu():
    b550, x570 = resolve_board("B550"), resolve_board("AMD X570")
    two = board_slots(b550, 2, resolve_cpu("5800X"))
    assert [(s.lanes, s.gen, s.attached) for s in two] == [(16, 4, "cpu"), (4, 3, "chipset")]
    assert [(s.lanes, s.gen) for s in board_slots(x570, 2, None)] == [(8, 4), (8, 4)]
    assert [(s.lanes, s.gen) for s in board_slots(x570, 1, None)] == [(16, 4)]
    apu = board_slots(b550, 1, resolve_cpu("5700G"))  # a PCIe 3.0 APU on a Gen4 board
    assert apu[0].gen == 3
    with pytest.raises(GpumixError, match="B550 is a AM4 board; Ryzen 9 7950X is a AM5 CPU"):
        board_slots(b550, 1, resolve_cpu("7950X"))
    with pytest.raises(GpumixError, match="at most 3 GPUs"):
        board_slots(b550, 4, None)


def _devices(text: str, this_machine=None):
    data, lines = read_yaml_with_lines(text, "d.yaml")
    return devices_from_entries(DevicesList.model_validate(data).devices, "d.yaml", lines, this_machine).devices


HOMELAB = """devices:
  - gpu: RTX 3090
  - gpu: RTX 3060 12GB
  - cpu: {model: Ryzen 7 5800X, ram_gb: 64, ram_type: DDR4-3600, ram_channels: 2, board: B550}
"""


def test_a_named_cpu_sets_threads_bandwidth_and_says_what_it_assumed():
    gpu0, gpu1, cpu = _devices(HOMELAB)
    assert cpu.id == "cpu0" and cpu.spec.id == "cpu-ryzen-7-5800x" and cpu.spec.kind == "cpu"
    assert cpu.threads == 8  # the physical cores: llama.cpp's default -t (common_cpu_get_num_math)
    assert cpu.spec.mem_bandwidth_gb_per_s == pytest.approx(57.6)
    assert cpu.memory_total_bytes == 64 * GB and cpu.spec.tdp_w == 142  # AMD PPT of a 105 W part
    assert "Ryzen 7 5800X" in (cpu.assumed or "") and "57.6 GB/s theoretical" in (cpu.assumed or "")
    # B550: the 3090 in the CPU's x16 Gen4 slot, the 3060 in the chipset's x4 Gen3 slot.
    assert (gpu0.pcie_gen, gpu0.pcie_width) == (4, 16) and (gpu1.pcie_gen, gpu1.pcie_width) == (3, 4)
    assert "chipset" in (gpu1.assumed or "") and "B550" in (gpu1.assumed or "")


def test_explicit_keys_override_the_platform():
    text = HOMELAB.replace("- gpu: RTX 3060 12GB", "- {gpu: RTX 3060 12GB, pcie_gen: 4, pcie_lanes: 8}")
    text = text.replace("ram_channels: 2,", "ram_channels: 2, threads: 16, bandwidth_gbs: 50,")
    _, gpu1, cpu = _devices(text)
    assert (gpu1.pcie_gen, gpu1.pcie_width) == (4, 8) and gpu1.assumed is None  # the entry's link wins
    assert cpu.threads == 16 and cpu.spec.mem_bandwidth_gb_per_s == 50
    assert "bandwidth_gbs given" in (cpu.assumed or "")


def test_a_cpu_without_a_model_says_it_used_the_defaults():
    machine = ThisMachine(ram_total_bytes=64 * GB, ram_available_bytes=60 * GB, threads=6, cpu_model=None)
    (cpu,) = _devices("devices:\n  - cpu: {ram_gb: 32}\n", lambda: machine)
    assert cpu.threads == 6  # this machine's usable CPUs, read through the reader the caller passes
    assert cpu.spec.id == "cpu" and cpu.spec.mem_bandwidth_gb_per_s == 51.2
    assert "CPU model not given" in (cpu.assumed or "") and "DDR4-3200" in (cpu.assumed or "")
    assert "threads not given" in (cpu.assumed or "")


@pytest.mark.parametrize(("entry", "message"), [
    ("{model: Ryzen 7 5800Y, ram_gb: 64}", r":2: devices\[0\].cpu.model: unknown CPU 'Ryzen 7 5800Y'"),
    ("{model: 5800X, ram_gb: 64, ram_type: DDR5-6000}", r":2: devices\[0\].cpu.ram_type: .*does not take DDR5"),
    ("{model: 5800X, ram_gb: 64, ram_channels: 4}", r":2: devices\[0\].cpu.ram_channels: .*2 memory channels, not 4"),
    ("{ram_gb: 64, ram_type: DDR9-1}", r":2: devices\[0\].cpu.ram_type"),
    ("{model: 7950X, ram_gb: 64, board: B550}", r":2: devices\[0\].cpu.board: B550 is a AM4 board"),
    ("{ram_gb: 64, board: Z999}", r":2: devices\[0\].cpu.board: unknown board 'Z999'"),
])  # fmt: skip
def test_bad_platform_entries_name_file_line_and_field(tmp_path, entry, message):
    path = tmp_path / "d.yaml"
    path.write_text(f"devices:\n  - cpu: {entry}\n  - gpu: RTX 3090\n")
    with pytest.raises(GpumixError, match=message):
        load_devices_file(path, read_this_machine)


def test_this_machine_uses_its_own_cpu_model_where_the_catalog_knows_it():
    machine = ThisMachine(ram_total_bytes=64 * GB, ram_available_bytes=60 * GB, threads=16,
                          cpu_model="AMD Ryzen 9 5950X 16-Core Processor")  # fmt: skip
    cpu = this_machine_cpu_device(lambda: machine)
    assert cpu.spec.id == "cpu-ryzen-9-5950x" and cpu.spec.mem_bandwidth_gb_per_s == 51.2  # its DDR4-3200 x2
    assert cpu.threads == 16 and cpu.memory_free_bytes == 60 * GB
    assert "Ryzen 9 5950X" in (cpu.assumed or "") and "fastest official DDR4-3200" in (cpu.assumed or "")
    unknown = this_machine_cpu_device(lambda: ThisMachine(8 * GB, 4 * GB, 2, "AMD EPYC"))
    assert unknown.spec.id == "cpu" and unknown.threads == 2


def test_a_discovered_machine_brings_its_own_cpu(monkeypatch):
    from gpumix.hardware import discovery
    from gpumix.hardware.catalog import resolve_gpu
    from gpumix.hardware.devices import device_from_spec

    monkeypatch.setattr(discovery, "this_machine_gpus", lambda: [device_from_spec(resolve_gpu("RTX 3090"), 0)])
    monkeypatch.setattr(discovery, "read_this_machine",
                        lambda: ThisMachine(128 * GB, 100 * GB, 32, "AMD Ryzen Threadripper 7960X 24-Cores"))  # fmt: skip
    gpu, cpu = discovery.this_machine_devices()
    assert gpu.id == "gpu0" and cpu.id == "cpu0"
    assert cpu.spec.id == "cpu-ryzen-threadripper-7960x" and cpu.threads == 24  # its cores (of 32 usable CPUs)
    assert cpu.spec.mem_bandwidth_gb_per_s == pytest.approx(4 * 5200 * 8 / 1000)  # quad-channel DDR5-5200
