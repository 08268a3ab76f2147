"""Building Devices: from catalog cards, this machine's CPU/RAM, and YAML devices files."""

from __future__ import annotations

import textwrap

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpumix.errors import GpumixError
from gpumix.hardware.catalog import resolve_gpu
from gpumix.hardware.devices import cpu_device, device_from_spec
from gpumix.hardware.discovery import read_meminfo, read_this_machine, this_machine_cpu, usable_threads
from gpumix.hardware.entries import ThisMachine, load_devices_file
from gpumix.units import GB, GiB

MEMINFO = """\
MemTotal:       65779204 kB
MemFree:         1204000 kB
MemAvailable:   40000000 kB
Buffers:          100000 kB
"""


def test_device_from_spec_defaults_to_an_empty_card():
    device = device_from_spec(resolve_gpu("RTX 4090"), index=1, host="box")
    assert (device.index, device.host, device.name, device.kind) == (1, "box", "RTX 4090", "gpu")
    assert device.memory_total_bytes == device.memory_free_bytes == 24 * GiB
    assert (device.pcie_gen, device.pcie_width) == (4, 16)


def test_device_from_spec_checks_free_memory():
    spec = resolve_gpu("RTX 3090")
    assert device_from_spec(spec, 0, free_bytes=20 * GiB).memory_free_bytes == 20 * GiB
    with pytest.raises(GpumixError, match="free memory 30.00 GiB must be between 0 and 24.00 GiB"):
        device_from_spec(spec, 0, free_bytes=30 * GiB)
    with pytest.raises(GpumixError, match="no memory size"):
        device_from_spec(resolve_gpu("Apple M4 Max (40-core GPU)"), 0)  # unified memory size not published
    assert device_from_spec(resolve_gpu("Apple M4 Max (40-core GPU)"), 0, total_bytes=64 * GiB).memory_total_bytes


def test_cpu_device():
    device = cpu_device(ram_bytes=64 * GiB, bandwidth_gb_per_s=89.6, threads=8, free_bytes=50 * GiB)
    assert (device.kind, device.index, device.threads) == ("cpu", -1, 8)
    assert device.spec.mem_bandwidth_gb_per_s == 89.6
    assert (device.memory_total_bytes, device.memory_free_bytes) == (64 * GiB, 50 * GiB)
    with pytest.raises(GpumixError, match="positive"):
        cpu_device(ram_bytes=0, bandwidth_gb_per_s=50, threads=1)


def test_this_machine_cpu_reads_meminfo(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(MEMINFO)
    assert read_meminfo(meminfo) == (65779204 * 1024, 40000000 * 1024)  # /proc/meminfo "kB" is KiB
    device = this_machine_cpu(meminfo_path=meminfo)
    assert device.memory_total_bytes == 65779204 * 1024 and device.memory_free_bytes == 40000000 * 1024
    assert device.spec.mem_bandwidth_gb_per_s == 51.2  # documented default: the DDR4-3200 dual-channel row
    assert device.threads == usable_threads()
    assert this_machine_cpu(bandwidth_gb_per_s=89.6, threads=3, meminfo_path=meminfo).threads == 3


def test_this_machine_cpu_on_the_real_machine():
    device = this_machine_cpu()
    assert 0 < device.memory_free_bytes <= device.memory_total_bytes
    assert device.threads >= 1


def test_missing_meminfo_is_a_clear_error(tmp_path):
    with pytest.raises(GpumixError, match="cannot read .*meminfo") as err:
        this_machine_cpu(meminfo_path=tmp_path / "meminfo")
    assert "devices file" in err.value.hint


def _write(tmp_path, text: str):
    path = tmp_path / "devices.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_load_devices_file(tmp_path):
    path = _write(
        tmp_path,
        """\
        - gpu: RTX 4090
        - gpu: 5060 Ti
          free_gb: 14
        - gpu: RTX 3090
          host: other
          count: 2
          free_gib: 23
        - cpu: {ram_gb: 64, bandwidth_gbs: 89.6, threads: 8}
        - cpu: {ram_gb: 128, memory: DDR5-4800 8-channel, threads: 32}
          host: other
        """,
    )
    devices = load_devices_file(path, read_this_machine)
    assert [(d.name, d.index, d.host) for d in devices] == [
        ("RTX 4090", 0, None),
        ("RTX 5060 Ti 16GB", 1, None),
        ("RTX 3090", 0, "other"),
        ("RTX 3090", 1, "other"),
        (devices[4].name, -1, None),
        (devices[5].name, -1, "other"),
    ]
    assert devices[1].memory_free_bytes == 14 * GB and devices[1].memory_total_bytes == 16 * GiB
    assert devices[2].memory_free_bytes == 23 * GiB
    assert devices[4].kind == "cpu" and devices[4].memory_total_bytes == 64 * GB and devices[4].threads == 8
    assert devices[5].spec.mem_bandwidth_gb_per_s == 307.2


def test_load_devices_file_accepts_a_plan_shaped_mapping(tmp_path):
    path = _write(
        tmp_path,
        """\
        services: []
        devices:
          - gpu: RTX 3090
            index: 1
          - gpu: RTX 3060 12GB
            index: 0
          - cpu: {}
        """,
    )
    devices = load_devices_file(path, read_this_machine)
    assert [(d.name, d.index) for d in devices][:2] == [("RTX 3090", 1), ("RTX 3060 12GB", 0)]
    assert devices[2].kind == "cpu" and devices[2].memory_total_bytes > 0  # this machine's RAM


def test_the_devices_file_reads_this_machine_only_through_the_callers_reader(tmp_path, monkeypatch):
    """The loader is pure: this machine's CPU comes from the reader the caller passes, or the fields are
    required."""
    path = _write(tmp_path, "- cpu: {}\n")
    with pytest.raises(GpumixError, match=r"devices\[0\]\.cpu\.ram_gb: ram_gb is required"):
        load_devices_file(path)
    path = _write(tmp_path, "- cpu: {ram_gb: 64}\n")
    with pytest.raises(GpumixError, match=r"devices\[0\]\.cpu\.threads: threads is required"):
        load_devices_file(path)
    fake = ThisMachine(ram_total_bytes=32 * GiB, ram_available_bytes=20 * GiB, threads=5)
    (device,) = load_devices_file(_write(tmp_path, "- cpu: {}\n"), lambda: fake)
    assert (device.memory_total_bytes, device.memory_free_bytes, device.threads) == (32 * GiB, 20 * GiB, 5)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- gpu: RTX 4090\n- gpu: RTX 4900\n", r"devices\[1\]\.gpu: unknown GPU 'RTX 4900'; closest: .*'RTX 4090'"),
        ("- gpu: H100\n", r"devices\[0\]\.gpu: GPU name 'H100' is ambiguous"),
        ("- gpu: RTX 4090\n  free_gb: lots\n", r":2: devices\[0\]\.free_gb: Input should be a valid number.* \(got 'lots'\)"),
        ("- gpu: RTX 4090\n  free_gb: 30\n", r":2: devices\[0\]\.free_gb: RTX 4090: free memory 27.94 GiB must be"),
        ("- gpu: RTX 4090\n  vram: 24\n", r":2: unknown key 'devices\[0\]\.vram' \(allowed here: .*total_gb"),
        ("- gpu: RTX 4090\n- gpu: RTX 3090\n  index: 0\n", r":3: devices\[1\]\.index: index 0 is already used"),
        ("- gpu: RTX 4090\n  index: -3\n", r"devices\[0\]\.index: Input should be greater than or equal to 0 \(got -3\)"),
        ("- gpu: RTX 4090\n  count: 0\n", r"devices\[0\]\.count: Input should be greater than or equal to 1 \(got 0\)"),
        ("- gpu: RTX 4090\n  count: 65\n", r"devices\[0\]\.count: Input should be less than or equal to 64 \(got 65\)"),
        ("- gpu: RTX 4090\n  free_gb: 1\n  free_gib: 1\n", r"devices\[0\]: give free_gb or free_gib, not both"),
        ("- gpu: RTX 4090\n  cpu: {}\n", r"devices\[0\]: each item needs exactly one of `gpu:` or `cpu:`"),
        ("- RTX 4090\n", r"devices\[0\]: each item needs exactly one of"),
        ("- cpu: {ram_gb: 64, speed: 3}\n", r"unknown key 'devices\[0\]\.cpu\.speed' \(allowed here: bandwidth_gbs"),
        ("- cpu: {ram_gb: 64, threads: 0}\n", r"devices\[0\]\.cpu\.threads: Input should be greater than or equal to 1"),
        ("- cpu: {ram_gb: 64}\n  index: 2\n", r"devices\[0\]: index belong to GPUs; put RAM sizes inside `cpu:"),
        ("- cpu: {ram_gb: 64, memory: DDR9}\n", r"devices\[0\]\.cpu\.memory: unknown GPU 'CPU DDR9'"),
        ("- cpu: {}\n  host: far\n", r"devices\[0\]\.cpu\.ram_gb: ram_gb is required for a CPU on another host"),
        ("- cpu: fast\n", r"devices\[0\]\.cpu: must be a mapping"),
        ("- cpu: {ram_gb: 4}\n  host: [1]\n", r"devices\[0\]\.host: Input should be a valid string"),
        ("- cpu: {ram_gb: 4}\n  host: a/b\n", r"devices\[0\]\.host: String should match pattern"),
        ("- gpu: RTX 4090\n  uuid: 7\n", r"devices\[0\]\.uuid: Input should be a valid string"),
        ("- gpu: RTX 4090\n  uuid: GPU-a\n  count: 2\n", r"devices\[0\]: a uuid names one card"),
        ("[]\n", "expected a non-empty list of devices"),
        ("gpu: [unclosed\n", "not valid YAML"),
    ],
)
def test_devices_file_errors_name_file_item_and_field(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(GpumixError, match=message) as err:
        load_devices_file(path)
    assert str(path) in err.value.message


def test_a_card_not_in_the_catalog_can_be_described(tmp_path):
    path = _write(
        tmp_path,
        """\
        - gpu: Fancy Card 9000
          total_gb: 24
          bandwidth_gbs: 700
          fp16_tflops: 100
          compute_capability: "8.9"
          free_gb: 20
        """,
    )
    (device,) = load_devices_file(path)
    assert (device.name, device.spec.id, device.spec.compute_capability) == (
        "Fancy Card 9000",
        "custom-fancy-card-9000",
        "8.9",
    )
    assert device.memory_total_bytes == 24 * GB and device.memory_free_bytes == 20 * GB
    assert (device.spec.mem_bandwidth_gb_per_s, device.spec.fp16_tflops) == (700, 100)
    path.write_text("- gpu: Fancy Card 9000\n  bandwidth_gbs: 700\n")
    with pytest.raises(GpumixError, match=r"devices\[0\]: a card described by its own figures needs total_gb"):
        load_devices_file(path)
    path.write_text("- gpu: Fancy Card 9000\n  total_gb: 24\n")
    with pytest.raises(GpumixError, match="for a card not in the catalog give total_gb and bandwidth_gbs"):
        load_devices_file(path)


def test_missing_devices_file(tmp_path):
    with pytest.raises(GpumixError, match="cannot read devices file"):
        load_devices_file(tmp_path / "nope.yaml")


_values = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 200), st.floats(allow_nan=True), st.text(max_size=12),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=6), st.integers(), max_size=2),
    st.sampled_from(["RTX 4090", "H100", "DDR5-5600", "3060"]),
)  # fmt: skip
_keys = st.sampled_from(
    ["gpu", "cpu", "index", "host", "free_gb", "free_gib", "total_gb", "uuid", "count", "ram_gb", "bandwidth_gbs",
     "threads", "memory", "other"]
)  # fmt: skip
_items = st.dictionaries(_keys, st.one_of(_values, st.dictionaries(_keys, _values, max_size=3)), max_size=5)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.lists(_items, max_size=4), _values))
def test_garbage_devices_files_give_devices_or_a_gpumix_error(tmp_path, document):
    path = tmp_path / "garbage.yaml"
    path.write_text(yaml.safe_dump(document))
    try:
        devices = load_devices_file(path)
    except GpumixError as exc:
        assert str(path) in exc.message
    else:
        assert devices and all(d.memory_free_bytes <= d.memory_total_bytes for d in devices)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200))
def test_garbage_bytes_give_a_gpumix_error_or_devices(tmp_path, data):
    path = tmp_path / "bytes.yaml"
    path.write_bytes(data)
    try:
        load_devices_file(path)
    except GpumixError as exc:
        assert str(path) in exc.message


def test_deeply_nested_yaml_is_refused(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("[" * 5000 + "]" * 5000)
    with pytest.raises(GpumixError, match="nested too deeply|not valid YAML"):
        load_devices_file(path)
