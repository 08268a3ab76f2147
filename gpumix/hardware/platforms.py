"""Host platforms: the CPU catalog (data/cpus.csv), the RAM a host has and its bandwidth, and board slot layouts
(data/boards.csv) that set each GPU's PCIe link.

A plan file's CPU entry names them: `cpu: {model: "Ryzen 7 5800X", ram_gb: 64, ram_type: DDR4-3600, ram_channels: 2,
board: B550}`. Theoretical RAM bandwidth = channels × MT/s × 8 bytes (a DDR channel is 64 bits wide; JEDEC
JESD79-4/-5 data rates). What decode actually reaches of it is the calibration's one CPU fraction
(`Calibration.backends["CPU"].bandwidth_efficiency`, see gpumix/calibrate/fit.py for its source), applied by the
speed model like every other device's efficiency; the plan states both numbers (`PlannedDevice.assumed`).

Names resolve like GPU names (gpumix.hardware.names): "5800X", "Ryzen 7 5800X" and "AMD Ryzen 7 5800X" are the
same CPU; "M3 Max" is ambiguous (14- or 16-core CPU, 300 or 400 GB/s).

Apple silicon: CPU and GPU share one unified memory. The GPU rows of gpus.csv (e.g. "Apple M2 Max (30-core GPU)")
carry the same bandwidth as the chip's row here; describe a Mac by its GPU (`gpu: ..., total_gb: N`, what Metal may
use) and, for CPU placement, a `cpu: {model: Apple M2 Max, ram_gb: M}` with the rest — the two must not add up to
more than the machine's memory.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from gpumix.errors import GpumixError
from gpumix.hardware.catalog import read_catalog_rows
from gpumix.hardware.names import NameIndex, NameRules, memory_size_optional
from gpumix.hardware.spec import Device, GpuSpec
from gpumix.units import GB

CPU_CATALOG_PATH = Path(__file__).parent / "data" / "cpus.csv"
BOARD_CATALOG_PATH = Path(__file__).parent / "data" / "boards.csv"
BYTES_PER_TRANSFER = 8  # one 64-bit DDR channel moves 8 bytes per transfer
_RAM_TYPE = re.compile(r"^(?P<kind>(?:LP)?DDR\dX?)(?:[- ]?(?P<mts>\d{3,5}))?$", re.IGNORECASE)
_SLOT = re.compile(r"^x(?P<lanes>\d{1,2})\s+gen(?P<gen>\d)\s+(?P<attached>cpu|chipset)$", re.IGNORECASE)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MemorySupport(_Frozen):
    kind: str  # DDR4, DDR5, LPDDR5X ...
    mts: int  # highest official data rate, MT/s

    @property
    def label(self) -> str:
        return f"{self.kind}-{self.mts}"


class CpuModel(_Frozen):
    """One row of data/cpus.csv; every figure has a source there."""

    id: str
    name: str
    vendor: str
    family: str
    launched: int | None = None
    cores: int
    threads: int
    memory: tuple[MemorySupport, ...]  # fastest first
    memory_channels: int  # 64-bit channels (Apple: memory bus width / 64)
    unified_memory: bool = False  # Apple silicon: CPU and GPU share it
    pcie_gen: int | None = None
    pcie_lanes_total: int | None = None
    pcie_lanes_usable: int | None = None  # for slots and NVMe (without the chipset link)
    tdp_w: float | None = None  # AMD default TDP / Intel Processor Base Power
    max_power_w: float | None = None  # AMD PPT / Intel Maximum Turbo Power (what a PSU must cover)
    socket: str | None = None
    aliases: tuple[str, ...] = ()
    source: str = ""

    def supported(self, kind: str) -> MemorySupport | None:
        return next((m for m in self.memory if m.kind.upper() == kind.upper()), None)


class RamConfig(_Frozen):
    """The RAM a host runs: type, data rate and populated channels."""

    kind: str
    mts: int
    channels: int

    @property
    def theoretical_gb_per_s(self) -> float:
        return self.channels * self.mts * BYTES_PER_TRANSFER / 1000

    @property
    def label(self) -> str:
        return f"{self.kind}-{self.mts} x{self.channels}"


class Slot(_Frozen):
    lanes: int
    gen: int
    attached: Literal["cpu", "chipset"]

    @property
    def label(self) -> str:
        return f"x{self.lanes} Gen{self.gen} ({'CPU' if self.attached == 'cpu' else 'chipset'})"


class Board(_Frozen):
    """A chipset's common slot layout for 1, 2, ... GPUs (data/boards.csv)."""

    id: str
    name: str
    socket: str
    layouts: dict[int, tuple[Slot, ...]]
    chipset_link: str = ""
    aliases: tuple[str, ...] = ()
    source: str = ""


# ---------------------------------------------------------------------------------------------- name resolution


def _cpu_optional_positions(tokens: list[str]) -> set[int]:
    """A tier word may be left out: the '7' of 'Ryzen 7', 'i9' of 'Core i9', 'Ultra 9' of 'Core Ultra 9', 'w5' of
    'Xeon w5' ('5800X' is 'Ryzen 7 5800X'; it stays apart from 'Ryzen 7 5800X3D', which has words more)."""
    optional = memory_size_optional(tokens)
    for i in range(len(tokens) - 1):
        nxt = tokens[i + 1].isdigit()
        if tokens[i] == "ryzen" and nxt:
            optional.add(i + 1)
        elif tokens[i] in ("i", "w") and nxt or tokens[i] == "ultra" and nxt and i > 0 and tokens[i - 1] == "core":
            optional |= {i, i + 1}
    return optional


CPU_NAME_RULES = NameRules(
    what="CPU",
    list_hint="`gpumix cpus` lists the catalog",
    noise=frozenset({"amd", "intel", "r", "tm", "processor"}),
    optional=frozenset({"ryzen", "core", "xeon", "epyc", "threadripper", "apple", "platinum", "gold", "silver"}),
    optional_positions=_cpu_optional_positions,
    unknown_hint="`gpumix cpus` lists the catalog; for a CPU not there give threads and ram_type (or bandwidth_gbs)",
)
BOARD_NAME_RULES = NameRules(
    what="board",
    list_hint="`gpumix cpus --boards` lists the board layouts",
    noise=frozenset({"amd", "intel", "chipset"}),
    optional=frozenset({"server", "board"}),
    unknown_hint="`gpumix cpus --boards` lists the layouts; or give pcie_gen/pcie_lanes on each GPU entry",
)


# ---------------------------------------------------------------------------------------------- loading the CSVs


def _cell(row: dict[str, str], column: str) -> str:
    return (row.get(column) or "").strip()


def _int(row: dict[str, str], column: str, where: str) -> int | None:
    text = _cell(row, column)
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise GpumixError(f"{where}: column {column!r} is not a whole number: {text!r}") from None


def _float(row: dict[str, str], column: str, where: str) -> float | None:
    text = _cell(row, column)
    try:
        return float(text) if text else None
    except ValueError:
        raise GpumixError(f"{where}: column {column!r} is not a number: {text!r}") from None


def parse_memory_type(text: str) -> tuple[str, int | None]:
    """'DDR4-3600' → ('DDR4', 3600); 'ddr5' → ('DDR5', None); 'LPDDR5X-8533' → ('LPDDR5X', 8533)."""
    found = _RAM_TYPE.match(text.strip())
    if found is None:
        raise GpumixError(f"{text!r} is not a RAM type", hint="write e.g. DDR4-3600, DDR5-6000 or LPDDR5X-8533")
    mts = found["mts"]
    return found["kind"].upper(), int(mts) if mts else None


def _memory(text: str, where: str) -> tuple[MemorySupport, ...]:
    out = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        try:
            kind, mts = parse_memory_type(part)
        except GpumixError as exc:
            raise GpumixError(f"{where}: column 'memory': {exc.message}") from None
        if mts is None:
            raise GpumixError(f"{where}: column 'memory': {part!r} needs a data rate (e.g. DDR4-3200)")
        out.append(MemorySupport(kind=kind, mts=mts))
    if not out:
        raise GpumixError(f"{where}: column 'memory' is empty")
    return tuple(out)


_CPU_COLUMNS = ("id", "name", "vendor", "cores", "threads", "memory", "memory_channels", "source")


def _cpu_from_row(row: dict[str, str], where: str) -> CpuModel:
    def required(column: str) -> int:
        value = _int(row, column, where)
        if value is None or value <= 0:
            raise GpumixError(f"{where}: column {column!r} must be a positive whole number")
        return value

    try:
        return CpuModel(
            id=_cell(row, "id"), name=_cell(row, "name"), vendor=_cell(row, "vendor"), family=_cell(row, "family"),
            launched=_int(row, "launched", where), cores=required("cores"), threads=required("threads"),
            memory=_memory(_cell(row, "memory"), where), memory_channels=required("memory_channels"),
            unified_memory=_cell(row, "unified_memory").lower() == "true", pcie_gen=_int(row, "pcie_gen", where),
            pcie_lanes_total=_int(row, "pcie_lanes_total", where),
            pcie_lanes_usable=_int(row, "pcie_lanes_usable", where), tdp_w=_float(row, "tdp_w", where),
            max_power_w=_float(row, "max_power_w", where), socket=_cell(row, "socket") or None,
            aliases=tuple(a.strip() for a in _cell(row, "aliases").split(";") if a.strip()),
            source=_cell(row, "source"),
        )  # fmt: skip
    except ValidationError as exc:
        raise GpumixError(f"{where}: invalid row: {exc.errors()[0]['msg']}") from None


def _slot(text: str, where: str) -> Slot:
    found = _SLOT.match(text.strip())
    if found is None:
        raise GpumixError(f"{where}: slot {text!r} is not like 'x16 gen4 cpu'")
    attached: Literal["cpu", "chipset"] = "cpu" if found["attached"].lower() == "cpu" else "chipset"
    return Slot(lanes=int(found["lanes"]), gen=int(found["gen"]), attached=attached)


def _layouts(text: str, where: str) -> dict[int, tuple[Slot, ...]]:
    layouts: dict[int, tuple[Slot, ...]] = {}
    for part in filter(None, (p.strip() for p in text.split("|"))):
        count, _, slots = part.partition(":")
        if not count.strip().isdigit():
            raise GpumixError(f"{where}: layout {part!r} does not start with a GPU count ('2: ...')")
        layout = tuple(_slot(s, where) for s in slots.split(",") if s.strip())
        if len(layout) != int(count):
            raise GpumixError(f"{where}: layout {part!r} lists {len(layout)} slots for {count.strip()} GPUs")
        layouts[int(count)] = layout
    if not layouts:
        raise GpumixError(f"{where}: column 'layouts' is empty")
    return layouts


@functools.cache
def cpu_catalog(path: Path = CPU_CATALOG_PATH) -> NameIndex[CpuModel]:
    models = [_cpu_from_row(row, where) for where, row in read_catalog_rows(path, _CPU_COLUMNS, "CPU catalog")]
    ids = [m.id for m in models]
    duplicate = next((i for i in ids if ids.count(i) > 1), None)
    if duplicate:
        raise GpumixError(f"CPU catalog {path}: duplicate id {duplicate!r}")
    return NameIndex(items=tuple(models), rules=CPU_NAME_RULES)


@functools.cache
def board_catalog(path: Path = BOARD_CATALOG_PATH) -> NameIndex[Board]:
    boards = []
    for where, row in read_catalog_rows(path, ("id", "name", "socket", "layouts", "source"), "board catalog"):
        boards.append(Board(
            id=_cell(row, "id"), name=_cell(row, "name"), socket=_cell(row, "socket"),
            layouts=_layouts(_cell(row, "layouts"), where), chipset_link=_cell(row, "chipset_link"),
            aliases=tuple(a.strip() for a in _cell(row, "aliases").split(";") if a.strip()), source=_cell(row, "source"),
        ))  # fmt: skip
    return NameIndex(items=tuple(boards), rules=BOARD_NAME_RULES)


def all_cpus() -> list[CpuModel]:
    return list(cpu_catalog().items)


def all_boards() -> list[Board]:
    return list(board_catalog().items)


def resolve_cpu(name: str) -> CpuModel:
    """The one catalog CPU `name` means; GpumixError (with candidates or closest names) otherwise."""
    return cpu_catalog().resolve(name)


def cpu_candidates(name: str) -> list[CpuModel]:
    return cpu_catalog().candidates(name)


def resolve_board(name: str) -> Board:
    return board_catalog().resolve(name)


# ------------------------------------------------------------------------------------------------- RAM


_OS_NAME_NOISE = re.compile(
    r"\(r\)|\(tm\)|\b\d+(?:th|nd|rd|st) gen\b|\b\d+-cores?(?: processor)?\b|\bcpu @ .*$|\bw/ .*$|\bwith radeon.*$",
    re.IGNORECASE,
)


def cpu_from_os_name(text: str) -> CpuModel | None:
    """The catalog CPU of a name as /proc/cpuinfo or sysctl prints it ('AMD Ryzen 7 5800X 8-Core Processor',
    '12th Gen Intel(R) Core(TM) i5-12600KF', 'Apple M2 Max'); None when it is not one catalog row."""
    cleaned = _OS_NAME_NOISE.sub(" ", text).strip()
    found = cpu_candidates(cleaned) if cleaned else []
    return found[0] if len(found) == 1 else None


def ram_config(cpu: CpuModel | None, ram_type: str | None, channels: int | None) -> tuple[RamConfig | None, list[str]]:
    """The host's RAM from the CPU model and what the entry says, and notes on what was assumed. None when neither a
    CPU model nor a RAM type is known (the caller falls back to a default bandwidth)."""
    notes: list[str] = []
    if cpu is None and ram_type is None:
        return None, notes
    kind, mts = parse_memory_type(ram_type) if ram_type else (None, None)
    if cpu is not None:
        support = cpu.memory[0] if kind is None else cpu.supported(kind)
        if support is None:
            listed = ", ".join(m.label for m in cpu.memory)
            raise GpumixError(f"{cpu.name} does not take {kind} memory (it supports {listed})",
                              hint=f"use ram_type: {cpu.memory[0].label} (or another type it supports)")  # fmt: skip
        if kind is None:
            notes.append(f"RAM type not given: the CPU's fastest official {support.label}")
        kind = support.kind
        if mts is None:
            mts = support.mts
        elif mts > support.mts and not cpu.unified_memory:
            notes.append(f"{kind}-{mts} is above the official {support.label} (an XMP/EXPO profile)")
        if cpu.unified_memory and (mts != support.mts or (channels is not None and channels != cpu.memory_channels)):
            raise GpumixError(f"{cpu.name} has soldered {support.label} unified memory on {cpu.memory_channels} "
                              "64-bit channels; leave ram_type and ram_channels out")  # fmt: skip
        most = cpu.memory_channels
        if channels is None:
            channels = most
            if not cpu.unified_memory:
                notes.append(f"ram_channels not given: all {most} channels populated")
        elif channels > most:
            raise GpumixError(f"{cpu.name} has {most} memory channels, not {channels}",
                              hint=f"ram_channels: {most} or fewer")  # fmt: skip
    if kind is None or mts is None:
        raise GpumixError(f"ram_type {ram_type!r} needs a data rate without a CPU model",
                          hint="write e.g. ram_type: DDR4-3600, or name the CPU (model: ...)")  # fmt: skip
    if channels is None:
        channels = 2
        notes.append("ram_channels not given: 2 (dual channel)")
    return RamConfig(kind=kind, mts=mts, channels=channels), notes


def cpu_spec(cpu: CpuModel | None, ram: RamConfig | None, bandwidth_gb_per_s: float, threads: int,
             source: str) -> GpuSpec:  # fmt: skip
    """The catalog-style spec of a host's CPU + RAM as an offload device (kind="cpu")."""
    if cpu is None:
        memory = f", {ram.label}" if ram else ""
        return GpuSpec(id="cpu", name=f"CPU ({threads} threads{memory}, {bandwidth_gb_per_s:g} GB/s RAM)", kind="cpu",
                       vendor="generic", arch="host CPU", vram_bytes=0, mem_bandwidth_gb_per_s=bandwidth_gb_per_s,
                       source=source)  # fmt: skip
    memory = ram.label if ram else f"{bandwidth_gb_per_s:g} GB/s RAM"
    return GpuSpec(id=f"cpu-{cpu.id}", name=f"{cpu.name} ({memory})", kind="cpu", vendor=cpu.vendor, arch=cpu.family,
                   vram_bytes=0, mem_bandwidth_gb_per_s=bandwidth_gb_per_s, tdp_w=cpu.max_power_w,
                   source=f"{cpu.source}; RAM: {source}")  # fmt: skip


def cpu_assumption(cpu: CpuModel | None, ram: RamConfig | None, ram_bytes: int, bandwidth_gb_per_s: float,
                   threads: int, how: list[str]) -> str:  # fmt: skip
    """What a plan assumed about a host's CPU and RAM, in a sentence (the planner appends the achieved bandwidth)."""
    who = "CPU model not given" if cpu is None else f"{cpu.name} ({cpu.cores} cores/{cpu.threads} threads)"
    memory = f"{ram_bytes / GB:.0f} GB" + (f" {ram.label}" if ram else "")
    if ram is not None and abs(ram.theoretical_gb_per_s - bandwidth_gb_per_s) < 1e-6:
        bw = (f"{bandwidth_gb_per_s:.1f} GB/s theoretical ({ram.channels} channels x {ram.mts} MT/s x "
              f"{BYTES_PER_TRANSFER} B)")  # fmt: skip
    else:
        bw = f"{bandwidth_gb_per_s:.1f} GB/s theoretical"
    extra = "".join(f"; {note}" for note in how)
    return f"{who}, {threads} threads used, {memory}: {bw}{extra}"


# ------------------------------------------------------------------------------------------------- boards


def board_slots(board: Board, n_gpus: int, cpu: CpuModel | None) -> tuple[Slot, ...]:
    """The slots n GPUs sit in on this board (the layout for n, else the smallest with more slots); a CPU-attached
    slot runs at most at the CPU's own PCIe generation."""
    if cpu is not None and cpu.socket and board.socket and cpu.socket != board.socket:
        raise GpumixError(f"{board.name} is a {board.socket} board; {cpu.name} is a {cpu.socket} CPU",
                          hint="name the board of that socket, or leave `board:` out")  # fmt: skip
    fitting = [n for n in sorted(board.layouts) if n >= n_gpus]
    if not fitting:
        most = max(board.layouts)
        raise GpumixError(f"the {board.name} layout in the catalog holds at most {most} GPUs, not {n_gpus}",
                          hint="give pcie_gen/pcie_lanes on each GPU entry for this board's real slots")  # fmt: skip
    slots = board.layouts[fitting[0]][:n_gpus]
    if cpu is None or cpu.pcie_gen is None:
        return slots
    cap = cpu.pcie_gen
    return tuple(s.model_copy(update={"gen": min(s.gen, cap)}) if s.attached == "cpu" else s for s in slots)


def slot_link(device: Device, slot: Slot, position: int, board: Board) -> Device:
    """The GPU in this slot: its link is the slower of the card's and the slot's (generation and lanes)."""
    gen = min(device.pcie_gen or slot.gen, slot.gen)
    lanes = min(device.pcie_width or slot.lanes, slot.lanes)
    via = f"via the chipset's {board.chipset_link} uplink, shared" if slot.attached == "chipset" else "from the CPU"
    note = f"slot {position + 1} of a {board.name} board: {slot.label}, {via}; the card links at Gen{gen} x{lanes}"
    return device.model_copy(update={"pcie_gen": gen, "pcie_width": lanes, "assumed": note})
