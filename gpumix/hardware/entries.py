"""The one devices schema: the `devices:` list of a plan file and a devices file (`gpumix devices --devices-file`,
`gpumix estimate --devices-file`) are the same entries, turned into `Device`s by the same rules.

    - gpu: RTX 4090            # any name `gpumix gpus` resolves
      index: 0                 # CUDA index under CUDA_DEVICE_ORDER=PCI_BUS_ID (default: next free on that host)
      host: box-a              # optional; DNS-label-like, no '/' (device ids are HOST/gpu0)
      count: 2                 # optional: this many identical cards with consecutive indices
      free_gb: 22.5            # optional, decimal GB (free_gib: binary GiB); default = the card's memory
      total_gb: 24             # optional (total_gib): a card whose catalog row has no memory size (Apple)
      uuid: GPU-...            # optional, one card (launch pins by UUID when every card has one)
      driver: "570.133.07"     # optional: driver version (lint compares branches per host)
      pcie_gen: 4              # optional: the slot's PCIe generation and lanes, if below the card's own
      pcie_lanes: 8
      socket: 0                # optional: CPU socket / NUMA node the card hangs off (TP across sockets)
    - gpu: My Custom Card      # a card not in the catalog: total_gb (or total_gib) and bandwidth_gbs, optionally
      total_gb: 24             #   fp16_tflops and compute_capability (these replace a catalog card's figures)
      bandwidth_gbs: 600
    - cpu: {ram_gb: 64, bandwidth_gbs: 51.2, threads: 8}   # system RAM as a (slow) device for CPU offload

Units: a key's suffix says its unit: `_gb` = 10^9 bytes, `_gib` = 2^30 bytes, `_gbs` = 10^9 bytes/s.

Indices: a GPU without `index:` gets the next free index on its host; CPUs are -1, -2, ... per host (their plan
ids cpu0, cpu1). A CPU without `ram_gb` is this machine's (only where the caller can read this machine: a devices
file; a plan file may be for another machine, so it needs `ram_gb`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gpumix.errors import GpumixError
from gpumix.hardware.catalog import resolve_gpu
from gpumix.hardware.devices import cpu_device, default_cpu_bandwidth_gb_per_s, device_from_spec
from gpumix.hardware.spec import HOST_PATTERN, Device, GpuSpec
from gpumix.units import GB, GiB
from gpumix.yaml_input import SourceLines, located_error, read_yaml_with_lines, validation_error

MAX_DEVICES_FILE_BYTES = 1_000_000  # a devices file is a few lines; refuse to parse something huge
DEVICES_HINT = "see docs/plan-file.md (devices) for the keys"
_CUSTOM_CARD_KEYS = ("bandwidth_gbs", "fp16_tflops", "compute_capability")  # a card described by its own figures
_GPU_ONLY_KEYS = ("index", "count", "free_gb", "free_gib", "total_gb", "total_gib", "uuid", "pcie_gen",
                  "pcie_lanes", "socket", "driver", *_CUSTOM_CARD_KEYS)  # fmt: skip


def text_or_number(value: Any) -> Any:
    """`gpu: 4090` or `quant: 8` read as numbers in YAML: accept them as text."""
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


def _one_of(entry: BaseModel, gb: str, gib: str) -> None:
    if getattr(entry, gb) is not None and getattr(entry, gib) is not None:
        raise ValueError(f"give {gb} or {gib}, not both")


def _bytes(gb: float | None, gib: float | None) -> int | None:
    if gb is not None:
        return int(round(gb * GB))
    return None if gib is None else int(round(gib * GiB))


class CpuEntry(_Strict):
    """CPU + RAM: `cpu: {}` (or `cpu: true`) is this machine's where the caller can read it."""

    ram_gb: float | None = Field(default=None, gt=0, le=65536)
    ram_gib: float | None = Field(default=None, gt=0, le=65536)
    free_gb: float | None = Field(default=None, gt=0, le=65536)
    free_gib: float | None = Field(default=None, gt=0, le=65536)
    bandwidth_gbs: float | None = Field(default=None, gt=0, le=100000)
    memory: str | None = Field(default=None, max_length=64)  # a catalog RAM row, e.g. "DDR5-4800 8-channel"
    threads: int | None = Field(default=None, ge=1, le=4096)

    @model_validator(mode="before")
    @classmethod
    def _mapping(cls, value: Any) -> Any:
        if value is None or value is True:
            return {}
        if not isinstance(value, dict):
            raise ValueError("must be a mapping like {ram_gb: 64, bandwidth_gbs: 51.2}")
        return value

    @model_validator(mode="after")
    def _units(self) -> CpuEntry:
        _one_of(self, "ram_gb", "ram_gib")
        _one_of(self, "free_gb", "free_gib")
        return self

    @property
    def ram_bytes(self) -> int | None:
        return _bytes(self.ram_gb, self.ram_gib)

    @property
    def free_bytes(self) -> int | None:
        return _bytes(self.free_gb, self.free_gib)


class DeviceEntry(_Strict):
    """One item of a `devices:` list: a GPU (`gpu:`) or the CPU and its RAM (`cpu:`)."""

    gpu: str | None = Field(default=None, min_length=1, max_length=128)
    cpu: CpuEntry | None = None
    host: str | None = Field(default=None, pattern=HOST_PATTERN)
    index: int | None = Field(default=None, ge=0, le=1023)
    count: int = Field(default=1, ge=1, le=64)
    free_gb: float | None = Field(default=None, gt=0, le=4096)
    free_gib: float | None = Field(default=None, gt=0, le=4096)
    total_gb: float | None = Field(default=None, gt=0, le=4096)
    total_gib: float | None = Field(default=None, gt=0, le=4096)
    uuid: str | None = Field(default=None, min_length=1, max_length=128)
    driver: str | None = Field(default=None, max_length=64)  # driver version, e.g. "570.133.07"
    pcie_gen: int | None = Field(default=None, ge=1, le=6)
    pcie_lanes: int | None = Field(default=None, ge=1, le=32)
    socket: int | None = Field(default=None, ge=0, le=64)  # CPU socket / NUMA node the card hangs off
    bandwidth_gbs: float | None = Field(default=None, gt=0, le=100000)  # custom cards only
    fp16_tflops: float | None = Field(default=None, gt=0, le=100000)
    compute_capability: str | None = Field(default=None, pattern=r"^\d+\.\d+$")

    _text = field_validator("gpu", "host", "driver", "compute_capability", mode="before")(text_or_number)

    @model_validator(mode="before")
    @classmethod
    def _mapping(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError("each item needs exactly one of `gpu:` or `cpu:` (a card name, or system RAM)")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> DeviceEntry:
        if (self.gpu is None) == (self.cpu is None):
            raise ValueError("each item needs exactly one of `gpu:` or `cpu:` (a card name, or system RAM)")
        beside_cpu = [key for key in _GPU_ONLY_KEYS if key in self.model_fields_set]
        if self.cpu is not None and beside_cpu:
            raise ValueError(f"{', '.join(beside_cpu)} belong to GPUs; put RAM sizes inside `cpu: {{ram_gb: ...}}`")
        if self.uuid is not None and self.count > 1:
            raise ValueError("a uuid names one card; drop it or count")
        _one_of(self, "free_gb", "free_gib")
        _one_of(self, "total_gb", "total_gib")
        return self

    @property
    def custom_card(self) -> bool:
        return any(getattr(self, key) is not None for key in _CUSTOM_CARD_KEYS)


class DevicesList(_Strict):
    """The root of a devices file (a bare list, or a mapping with `devices:` such as a plan file)."""

    devices: list[DeviceEntry] = Field(min_length=1, max_length=4096)


# ---------------------------------------------------------------------------------------------- entries → Device


@dataclass(frozen=True)
class ThisMachine:
    """What a CPU entry without sizes defaults to: this machine's RAM (total, available) and usable threads."""

    ram_total_bytes: int
    ram_available_bytes: int
    threads: int



@dataclass(frozen=True)
class LocalMachine:
    """How to read the machine gpumix runs on, passed in by the CLI (gpumix.hardware.discovery.LOCAL_MACHINE):
    the core never reads NVML, /proc or the CPU affinity itself."""

    gpus: Callable[[], Sequence[Device]]  # this machine's GPUs (NVML), for a plan file without `devices:`
    cpu: Callable[[], ThisMachine]  # its RAM and usable threads, for a `cpu:` entry that leaves them out


@dataclass
class EntryDevices:
    devices: list[Device] = field(default_factory=list)
    sockets: dict[str, int | None] = field(default_factory=dict)  # device id → CPU socket, when given


def devices_from_entries(entries: Sequence[DeviceEntry], source: str, lines: SourceLines,
                         this_machine: Callable[[], ThisMachine] | None = None) -> EntryDevices:  # fmt: skip
    """Devices of a `devices:` list, in order. Errors are GpumixErrors naming file:line and field.
    `this_machine` sizes a CPU entry without `ram_gb` (None: such an entry is an error)."""
    out = EntryDevices()
    taken: set[tuple[str | None, int]] = set()
    for position, entry in enumerate(entries):
        loc = ("devices", position)
        if entry.cpu is not None:
            index = -1 - sum(1 for host, i in taken if host == entry.host and i < 0)
            new = [_cpu(entry, entry.cpu, index, loc, source, lines, this_machine)]
        else:
            next_index = 1 + max((i for host, i in taken if host == entry.host and i >= 0), default=-1)
            new = _gpus(entry, next_index, loc, source, lines)
        for device in new:
            if (device.host, device.index) in taken:
                where = f" on host {device.host!r}" if device.host else ""
                raise located_error(source, lines, (*loc, "index"), f"index {device.index} is already used{where}")
            taken.add((device.host, device.index))
            out.devices.append(device)
            if entry.socket is not None:
                out.sockets[device.id] = entry.socket
    return out


def _gpus(entry: DeviceEntry, next_index: int, loc: tuple[str | int, ...], source: str, lines: SourceLines) -> list[Device]:
    spec = _card(entry, loc, source, lines)
    start = next_index if entry.index is None else entry.index
    free = _bytes(entry.free_gb, entry.free_gib)
    total = _bytes(entry.total_gb, entry.total_gib)
    field_name = "free_gb" if entry.free_gb is not None else "free_gib" if free is not None else "total_gb"
    devices = []
    for k in range(entry.count):
        try:
            device = device_from_spec(spec, start + k, free_bytes=free, host=entry.host, total_bytes=total,
                                      uuid=entry.uuid)  # fmt: skip
        except GpumixError as exc:
            raise located_error(source, lines, (*loc, field_name), exc.message, exc.hint) from None
        update: dict[str, Any] = {"driver_version": entry.driver}
        if entry.pcie_gen is not None:
            update["pcie_gen"] = entry.pcie_gen
        if entry.pcie_lanes is not None:
            update["pcie_width"] = entry.pcie_lanes
        devices.append(device.model_copy(update=update))
    return devices


def _card(entry: DeviceEntry, loc: tuple[str | int, ...], source: str, lines: SourceLines) -> GpuSpec:
    """The catalog card, or a card the entry describes by its own figures."""
    name = str(entry.gpu).strip()
    if entry.custom_card:
        return _custom_card(entry, name, loc, source, lines)
    try:
        return resolve_gpu(name)
    except GpumixError as exc:
        extra = "; for a card not in the catalog give total_gb and bandwidth_gbs" if "unknown" in exc.message else ""
        raise located_error(source, lines, (*loc, "gpu"), exc.message + extra, exc.hint) from None


def _custom_card(entry: DeviceEntry, name: str, loc: tuple[str | int, ...], source: str, lines: SourceLines) -> GpuSpec:
    total = _bytes(entry.total_gb, entry.total_gib)
    if total is None or not entry.bandwidth_gbs:
        raise located_error(source, lines, loc, "a card described by its own figures needs total_gb (or total_gib) "
                            "and bandwidth_gbs > 0", hint=DEVICES_HINT)  # fmt: skip
    return GpuSpec(
        id="custom-" + (re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"),
        name=name,
        arch="unknown (described in a devices list)",
        compute_capability=entry.compute_capability,
        vram_bytes=total,
        mem_bandwidth_gb_per_s=entry.bandwidth_gbs,
        fp16_tflops=entry.fp16_tflops,
        source=f"{source}: {'.'.join(map(str, loc))}",
    )


def _cpu(entry: DeviceEntry, cpu: CpuEntry, index: int, loc: tuple[str | int, ...], source: str, lines: SourceLines,
         this_machine: Callable[[], ThisMachine] | None) -> Device:  # fmt: skip
    ram, free, threads = cpu.ram_bytes, cpu.free_bytes, cpu.threads
    if ram is None:
        if entry.host is not None or this_machine is None:
            why = "for a CPU on another host" if entry.host is not None else "(the plan may be for another machine)"
            raise located_error(source, lines, (*loc, "cpu", "ram_gb"), f"ram_gb is required {why}",
                                hint="e.g. cpu: {ram_gb: 64, bandwidth_gbs: 60}")  # fmt: skip
        machine = this_machine()
        ram, free = machine.ram_total_bytes, machine.ram_available_bytes if free is None else free
        threads = threads or machine.threads
    bandwidth = cpu.bandwidth_gbs or _ram_row_bandwidth(cpu, loc, source, lines) or default_cpu_bandwidth_gb_per_s()
    if threads is None:
        if entry.host is not None or this_machine is None:
            raise located_error(source, lines, (*loc, "cpu", "threads"), "threads is required (the plan may be for "
                                "another machine)", hint="e.g. cpu: {ram_gb: 64, threads: 8}")  # fmt: skip
        threads = this_machine().threads
    try:
        return cpu_device(ram, bandwidth, threads, free, index=index, host=entry.host)
    except GpumixError as exc:
        raise located_error(source, lines, (*loc, "cpu"), exc.message, exc.hint) from None


def _ram_row_bandwidth(cpu: CpuEntry, loc: tuple[str | int, ...], source: str, lines: SourceLines) -> float | None:
    if cpu.memory is None:
        return None
    try:
        return resolve_gpu(f"CPU {cpu.memory}").mem_bandwidth_gb_per_s
    except GpumixError as exc:
        raise located_error(source, lines, (*loc, "cpu", "memory"), exc.message, exc.hint) from None


# ---------------------------------------------------------------------------------------------- devices file


def load_devices_file(path: str | Path, this_machine: Callable[[], ThisMachine] | None = None) -> list[Device]:
    """Devices described in a YAML file (a list, or a mapping with a `devices:` list such as a plan file); errors
    name the file, line, item and field."""
    path = Path(path)
    data, lines = read_yaml_with_lines(_read_text(path), str(path))
    if isinstance(data, dict) and "devices" in data:
        data = {"devices": data["devices"]}
    elif isinstance(data, list):
        data, lines = {"devices": data}, _under_devices(lines)
    if not isinstance(data, dict) or not isinstance(data.get("devices"), list) or not data["devices"]:
        raise GpumixError(f"{path}: expected a non-empty list of devices (or a mapping with a `devices:` list)",
                          hint="e.g.\n- gpu: RTX 4090\n- gpu: RTX 5060 Ti 16GB")  # fmt: skip
    try:
        entries = DevicesList.model_validate(data).devices
    except ValidationError as exc:
        raise validation_error(DevicesList, exc, lines, str(path), hint=DEVICES_HINT) from None
    return devices_from_entries(entries, str(path), lines, this_machine).devices


def _read_text(path: Path) -> str:
    try:
        if path.stat().st_size > MAX_DEVICES_FILE_BYTES:
            raise GpumixError(f"{path}: larger than {MAX_DEVICES_FILE_BYTES} bytes; not a devices file")
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise GpumixError(f"cannot read devices file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise GpumixError(f"{path}: not valid YAML (not UTF-8 text)") from None


def _under_devices(lines: SourceLines) -> SourceLines:
    """The line table of a bare list, re-rooted under `devices` (errors then read devices[0].gpu)."""
    out = SourceLines()
    out.by_path = {("devices", *loc): line for loc, line in lines.by_path.items()}
    return out
