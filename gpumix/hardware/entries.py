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
    - cpu: {model: Ryzen 7 5800X, ram_gb: 64, ram_type: DDR4-3600, ram_channels: 2, board: B550}
                               # a catalog CPU (`gpumix cpus`): threads = its cores, bandwidth = channels x MT/s x 8 B;
                               #   board: a chipset layout that sets each GPU's PCIe link (gpumix.hardware.platforms)

Units: a key's suffix says its unit: `_gb` = 10^9 bytes, `_gib` = 2^30 bytes, `_gbs` = 10^9 bytes/s.

Indices: a GPU without `index:` gets the next free index on its host; CPUs are -1, -2, ... per host (their plan
ids cpu0, cpu1). A CPU without `ram_gb` is this machine's (only where the caller can read this machine: a devices
file; a plan file may be for another machine, so it needs `ram_gb`); without `model:` it is then this machine's own CPU
model (/proc/cpuinfo) where the catalog knows it. Every CPU device says what was assumed (`Device.assumed`).

Precedence: `bandwidth_gbs` > the RAM of `model`/`ram_type`/`ram_channels` > `memory` (a catalog RAM row) > dual-channel
DDR4-3200; `threads` > the model's cores (llama.cpp's default -t is the physical cores) > this process's CPUs. A GPU
entry's `pcie_gen`/`pcie_lanes` > the board's slot > the card's own link (the plan's `links:` still override all).
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
from gpumix.hardware.devices import (
    DEFAULT_CPU_BANDWIDTH_ROW,
    cpu_device,
    default_cpu_bandwidth_gb_per_s,
    device_from_spec,
)
from gpumix.hardware.platforms import (
    CpuModel,
    RamConfig,
    board_slots,
    cpu_assumption,
    cpu_from_os_name,
    cpu_spec,
    ram_config,
    resolve_board,
    resolve_cpu,
    slot_link,
)
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
    model: str | None = Field(default=None, min_length=1, max_length=128)  # a catalog CPU (data/cpus.csv)
    ram_type: str | None = Field(default=None, pattern=r"(?i)^(LP)?DDR\dX?([- ]?\d{3,5})?$")  # DDR4-3600, DDR5-6000
    ram_channels: int | None = Field(default=None, ge=1, le=24)  # populated 64-bit memory channels
    board: str | None = Field(default=None, min_length=1, max_length=64)  # a chipset layout (data/boards.csv)

    _text = field_validator("model", "board", mode="before")(text_or_number)

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
    cpu_model: str | None = None  # as the OS names it (/proc/cpuinfo "model name")




@dataclass(frozen=True)
class LocalMachine:
    """How to read the machine gpumix runs on, passed in by the CLI (gpumix.hardware.discovery.LOCAL_MACHINE):
    the core never reads NVML, /proc or the CPU affinity itself."""

    devices: Callable[[], Sequence[Device]]  # this machine's GPUs and its CPU, for a plan file without `devices:`
    cpu: Callable[[], ThisMachine]  # its RAM, usable threads and CPU model, for a `cpu:` entry that leaves them out


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
    explicit_links: set[str] = set()  # GPUs whose entry gives pcie_gen/pcie_lanes: a board does not change them
    boards: dict[str | None, tuple[int, CpuModel | None]] = {}  # host → (position of its CPU entry, its model)
    for position, entry in enumerate(entries):
        loc = ("devices", position)
        if entry.cpu is not None:
            index = -1 - sum(1 for host, i in taken if host == entry.host and i < 0)
            device, model = _cpu(entry, entry.cpu, index, loc, source, lines, this_machine)
            new = [device]
            if entry.cpu.board is not None:
                if entry.host in boards:
                    raise located_error(source, lines, (*loc, "cpu", "board"), "a host has one board; another CPU "
                                        "entry of this host already names one")  # fmt: skip
                boards[entry.host] = (position, model)
        else:
            next_index = 1 + max((i for host, i in taken if host == entry.host and i >= 0), default=-1)
            new = _gpus(entry, next_index, loc, source, lines)
            if entry.pcie_gen is not None or entry.pcie_lanes is not None:
                explicit_links |= {d.id for d in new}
        for device in new:
            if (device.host, device.index) in taken:
                where = f" on host {device.host!r}" if device.host else ""
                raise located_error(source, lines, (*loc, "index"), f"index {device.index} is already used{where}")
            taken.add((device.host, device.index))
            out.devices.append(device)
            if entry.socket is not None:
                out.sockets[device.id] = entry.socket
    for position, model in boards.values():
        _seat_gpus(out, entries[position], model, explicit_links, ("devices", position), source, lines)
    return out


def _seat_gpus(out: EntryDevices, entry: DeviceEntry, model: CpuModel | None, explicit: set[str],
               loc: tuple[str | int, ...], source: str, lines: SourceLines) -> None:  # fmt: skip
    """Each GPU of the board's host in its slot (device index order): the slot sets the link the entry left open."""
    assert entry.cpu is not None and entry.cpu.board is not None
    gpus = sorted((d for d in out.devices if d.host == entry.host and d.kind == "gpu"), key=lambda d: d.index)
    if not gpus:
        return
    try:
        board = resolve_board(entry.cpu.board)
        slots = board_slots(board, len(gpus), model)
    except GpumixError as exc:
        raise located_error(source, lines, (*loc, "cpu", "board"), exc.message, exc.hint) from None
    seated = {gpu.id: slot_link(gpu, slot, i, board) for i, (gpu, slot) in enumerate(zip(gpus, slots, strict=True))
              if gpu.id not in explicit}  # fmt: skip
    out.devices = [seated.get(d.id, d) for d in out.devices]


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
         this_machine: Callable[[], ThisMachine] | None) -> tuple[Device, CpuModel | None]:  # fmt: skip
    """The CPU + RAM device of a `cpu:` entry, and the catalog CPU it names (or this machine's, when sized from it)."""
    ram, free = cpu.ram_bytes, cpu.free_bytes
    machine: ThisMachine | None = None
    if ram is None:
        if entry.host is not None or this_machine is None:
            why = "for a CPU on another host" if entry.host is not None else "(the plan may be for another machine)"
            raise located_error(source, lines, (*loc, "cpu", "ram_gb"), f"ram_gb is required {why}",
                                hint="e.g. cpu: {model: Ryzen 7 5800X, ram_gb: 64, ram_type: DDR4-3600}")  # fmt: skip
        machine = this_machine()
        ram, free = machine.ram_total_bytes, machine.ram_available_bytes if free is None else free
    model = _cpu_model(cpu, machine, loc, source, lines)
    try:
        ram_cfg, how = ram_config(model, cpu.ram_type, cpu.ram_channels)
    except GpumixError as exc:
        key = "ram_type" if cpu.ram_type is not None else "ram_channels" if cpu.ram_channels is not None else "model"
        raise located_error(source, lines, (*loc, "cpu", key), exc.message, exc.hint) from None
    bandwidth, bandwidth_source = _bandwidth(cpu, ram_cfg, loc, source, lines)
    if bandwidth_source:
        how.append(bandwidth_source)
    # The model's physical cores (llama.cpp's default -t), on this machine no more than this process may use.
    cores = model.cores if model else None
    usable = machine.threads if machine else None
    threads = cpu.threads or (min(cores, usable) if cores and usable else cores or usable)
    if threads is None:
        if entry.host is not None or this_machine is None:
            raise located_error(source, lines, (*loc, "cpu", "threads"), "threads is required (the plan may be for "
                                "another machine)", hint="give threads, or the CPU: cpu: {model: Ryzen 7 5800X, "
                                "ram_gb: 64}")  # fmt: skip
        threads = this_machine().threads
        how.append(f"threads not given: {threads} (the CPUs this gpumix process may use)")
    try:
        device = cpu_device(ram, bandwidth, threads, free, index=index, host=entry.host)
    except GpumixError as exc:
        raise located_error(source, lines, (*loc, "cpu"), exc.message, exc.hint) from None
    update: dict[str, Any] = {"assumed": cpu_assumption(model, ram_cfg, ram, bandwidth, threads, how)}
    if model is not None or ram_cfg is not None:
        spec = cpu_spec(model, ram_cfg, bandwidth, threads, bandwidth_source or "channels x MT/s x 8 B")
        update["spec"] = spec.model_copy(update={"vram_bytes": ram})
    return device.model_copy(update=update), model


def _cpu_model(cpu: CpuEntry, machine: ThisMachine | None, loc: tuple[str | int, ...], source: str,
               lines: SourceLines) -> CpuModel | None:  # fmt: skip
    """The entry's catalog CPU; without `model:`, this machine's own CPU when the entry describes this machine."""
    if cpu.model is not None:
        try:
            return resolve_cpu(cpu.model)
        except GpumixError as exc:
            raise located_error(source, lines, (*loc, "cpu", "model"), exc.message, exc.hint) from None
    if machine is not None and machine.cpu_model:
        return cpu_from_os_name(machine.cpu_model)
    return None


def _bandwidth(cpu: CpuEntry, ram: RamConfig | None, loc: tuple[str | int, ...], source: str,
               lines: SourceLines) -> tuple[float, str | None]:  # fmt: skip
    """RAM bandwidth (GB/s) by precedence, and a note when it did not come from the RAM configuration."""
    if cpu.bandwidth_gbs:
        return cpu.bandwidth_gbs, "bandwidth_gbs given in the file"
    if ram is not None:
        return ram.theoretical_gb_per_s, None
    row = _ram_row_bandwidth(cpu, loc, source, lines)
    if row is not None:
        return row, f"catalog RAM row {cpu.memory}"
    return default_cpu_bandwidth_gb_per_s(), f"RAM not described: default {DEFAULT_CPU_BANDWIDTH_ROW.removeprefix('CPU ')}"


def _ram_row_bandwidth(cpu: CpuEntry, loc: tuple[str | int, ...], source: str, lines: SourceLines) -> float | None:
    if cpu.memory is None:
        return None
    try:
        return resolve_gpu(f"CPU {cpu.memory}").mem_bandwidth_gb_per_s
    except GpumixError as exc:
        raise located_error(source, lines, (*loc, "cpu", "memory"), exc.message, exc.hint) from None


def this_machine_cpu_device(this_machine: Callable[[], ThisMachine]) -> Device:
    """This machine's CPU and RAM as the CPU entry `cpu: {}` of a devices file gives it: its own CPU model where the
    catalog knows it (threads and RAM bandwidth from there), else the defaults; `assumed` says which."""
    return devices_from_entries([DeviceEntry(cpu=CpuEntry())], "this machine", SourceLines(), this_machine).devices[0]


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
