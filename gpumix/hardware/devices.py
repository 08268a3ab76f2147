"""Build `Device`s: from a catalog card, for a CPU/RAM, or from a YAML devices file.

Nothing here looks at this machine: its CPU and RAM (/proc/meminfo, CPU affinity) and its GPUs (NVML) are read by
`gpumix.hardware.discovery`, the one I/O module of the core, and passed in (`load_devices_file(..., local_cpu=)`).

Devices file (the same shape as a plan file's `devices:`; a file with a top-level `devices:` key also works):

    - gpu: RTX 4090            # any name `gpumix gpus` resolves
      index: 0                 # CUDA index under CUDA_DEVICE_ORDER=PCI_BUS_ID (default: next free on that host)
      host: box-a              # optional
      free_gb: 22.5            # optional, decimal GB (free_gib for binary); default = the card's VRAM
      total_gb: 24             # optional (a card whose catalog row has no VRAM, e.g. Apple), uuid: GPU-... optional
      count: 2                 # optional: this many identical cards with consecutive indices
    - gpu: My Custom Card      # a card not in the catalog: give at least total_gb (or total_gib) and bandwidth_gbs,
      total_gb: 24             #   optionally fp16_tflops and compute_capability (these replace a catalog card's figures)
      bandwidth_gbs: 600
    - cpu: {ram_gb: 64, bandwidth_gbs: 51.2, threads: 8}   # every key optional; default = this machine (local_cpu)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from gpumix.errors import GpumixError
from gpumix.hardware.catalog import resolve_gpu
from gpumix.hardware.spec import Device, GpuSpec
from gpumix.units import GB, GiB

# Default CPU/RAM bandwidth when nothing better is known: the catalog's dual-channel DDR4-3200 row, 51.2 GB/s
# (JEDEC JESD79-4: 3200 MT/s x 8 B x 2 channels). A conservative desktop figure; override with bandwidth_gb_per_s.
DEFAULT_CPU_BANDWIDTH_ROW = "CPU DDR4-3200 dual-channel"
MAX_DEVICES_FILE_BYTES = 1_000_000  # a devices file is a few lines; refuse to parse something huge
_GPU_KEYS = {"gpu", "index", "host", "free_gb", "free_gib", "total_gb", "total_gib", "uuid", "count"}
_CUSTOM_GPU_KEYS = {"bandwidth_gbs", "fp16_tflops", "compute_capability"}  # only for cards not in the catalog
_CPU_KEYS = {"ram_gb", "ram_gib", "free_gb", "free_gib", "bandwidth_gbs", "memory", "threads"}


def device_from_spec(
    spec: GpuSpec,
    index: int,
    free_bytes: int | None = None,
    host: str | None = None,
    total_bytes: int | None = None,
    uuid: str | None = None,
) -> Device:
    """A device of `spec`; total defaults to the catalog VRAM and free to the total (a hypothetical, empty card)."""
    total = spec.vram_bytes if total_bytes is None else total_bytes
    if total <= 0:
        raise GpumixError(
            f"{spec.name}: the catalog has no memory size for this device",
            hint="give its memory (total_gb in a devices file)",
        )
    free = total if free_bytes is None else free_bytes
    if not 0 <= free <= total:
        raise GpumixError(f"{spec.name}: free memory {free / GiB:.2f} GiB must be between 0 and {total / GiB:.2f} GiB")
    return Device(
        index=index,
        spec=spec,
        memory_total_bytes=total,
        memory_free_bytes=free,
        host=host,
        uuid=uuid,
        pcie_gen=spec.pcie_gen,
        pcie_width=spec.pcie_lanes,
    )


def cpu_device(
    ram_bytes: int,
    bandwidth_gb_per_s: float,
    threads: int,
    free_bytes: int | None = None,
    index: int = -1,
    host: str | None = None,
) -> Device:
    """CPU + RAM as a (slow) device: llama.cpp runs layers there when they are not offloaded (-ngl)."""
    if ram_bytes <= 0 or bandwidth_gb_per_s <= 0 or threads <= 0:
        raise GpumixError(
            f"CPU device needs positive RAM, bandwidth and threads (got {ram_bytes} B, {bandwidth_gb_per_s} GB/s, "
            f"{threads} threads)"
        )
    spec = GpuSpec(
        id="cpu",
        name=f"CPU ({threads} threads, {bandwidth_gb_per_s:g} GB/s RAM)",
        kind="cpu",
        vendor="generic",
        arch="host CPU",
        vram_bytes=ram_bytes,
        mem_bandwidth_gb_per_s=bandwidth_gb_per_s,
        source="built from the machine's RAM size and a RAM bandwidth (see gpumix/hardware/devices.py)",
    )
    free = ram_bytes if free_bytes is None else min(free_bytes, ram_bytes)
    return Device(
        index=index, spec=spec, memory_total_bytes=ram_bytes, memory_free_bytes=free, host=host, threads=threads
    )


def default_cpu_bandwidth_gb_per_s() -> float:
    return resolve_gpu(DEFAULT_CPU_BANDWIDTH_ROW).mem_bandwidth_gb_per_s


# ---------------------------------------------------------------------------------------------- devices file


class _Item:
    """One list item of a devices file, with errors that name file, item and field."""

    def __init__(self, path: Path, position: int, data: dict[str, Any]) -> None:
        self.where = f"{path}: devices[{position}]"
        self.data = data

    def fail(self, message: str, field: str | None = None) -> GpumixError:
        at = f"{self.where}.{field}" if field else self.where
        return GpumixError(f"{at}: {message}", hint="see `gpumix devices --help` for the devices-file format")

    def check_keys(self, data: dict[str, Any], allowed: set[str], prefix: str = "") -> None:
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise self.fail(f"unknown field(s) {unknown}; allowed: {sorted(allowed)}", prefix or None)

    def number(self, data: dict[str, Any], field: str, *, minimum: float = 0.0) -> float | None:
        value = data.get(field)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum or value != value:
            raise self.fail(f"must be a number >= {minimum:g}, got {value!r}", field)
        return float(value)

    def memory_bytes(self, data: dict[str, Any], gb_field: str, gib_field: str) -> int | None:
        gb, gib = self.number(data, gb_field), self.number(data, gib_field)
        if gb is not None and gib is not None:
            raise self.fail(f"give {gb_field} or {gib_field}, not both", gb_field)
        if gb is not None:
            return int(round(gb * GB))
        return None if gib is None else int(round(gib * GiB))


def _read_devices_yaml(path: Path) -> list[Any]:
    try:
        if path.stat().st_size > MAX_DEVICES_FILE_BYTES:
            raise GpumixError(f"{path}: larger than {MAX_DEVICES_FILE_BYTES} bytes; not a devices file")
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise GpumixError(f"cannot read devices file {path}: {exc.strerror}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise GpumixError(f"{path}: not valid YAML ({(str(exc).splitlines() or ['?'])[0]})") from None
    except RecursionError:
        raise GpumixError(f"{path}: nested too deeply to be a devices file") from None
    if isinstance(data, dict) and "devices" in data:
        data = data["devices"]
    if not isinstance(data, list) or not data:
        raise GpumixError(
            f"{path}: expected a non-empty list of devices (or a mapping with a `devices:` list)",
            hint="e.g.\n- gpu: RTX 4090\n- gpu: RTX 5060 Ti 16GB",
        )
    return data


def _gpu_devices(item: _Item, next_index: int) -> list[Device]:
    data = item.data
    custom = _CUSTOM_GPU_KEYS & set(data)
    item.check_keys(data, _GPU_KEYS | _CUSTOM_GPU_KEYS)
    name = data["gpu"]
    if not isinstance(name, str | int) or not str(name).strip():
        raise item.fail(f"must be a GPU name, got {name!r}", "gpu")
    spec = _custom_spec(item, str(name).strip()) if custom else None
    if spec is None:
        try:
            spec = resolve_gpu(str(name))
        except GpumixError as exc:
            extra = (
                "; for a card not in the catalog give total_gb and bandwidth_gbs" if "unknown" in exc.message else ""
            )
            raise item.fail(exc.message + extra, "gpu") from None
    index = data.get("index", next_index)
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise item.fail(f"must be a whole number >= 0, got {index!r}", "index")
    count = data.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 64:
        raise item.fail(f"must be a whole number from 1 to 64, got {count!r}", "count")
    host, uuid = data.get("host"), data.get("uuid")
    if uuid is not None and not isinstance(uuid, str):
        raise item.fail(f"must be text, got {uuid!r}", "uuid")
    if uuid is not None and count > 1:
        raise item.fail("a uuid names one card; drop it or count", "uuid")
    total = item.memory_bytes(data, "total_gb", "total_gib")
    free = item.memory_bytes(data, "free_gb", "free_gib")
    try:
        return [
            device_from_spec(spec, index + k, free_bytes=free, host=host, total_bytes=total, uuid=uuid)
            for k in range(count)
        ]
    except GpumixError as exc:
        raise item.fail(exc.message, "free_gb" if free is not None else "total_gb") from None


def _custom_spec(item: _Item, name: str) -> GpuSpec:
    """A card described in full by the file (not in the catalog): its memory and bandwidth are required."""
    data = item.data
    total = item.memory_bytes(data, "total_gb", "total_gib")
    bandwidth = item.number(data, "bandwidth_gbs")
    if total is None or not bandwidth:
        raise item.fail("a card described by its own figures needs total_gb (or total_gib) and bandwidth_gbs > 0")
    cc = data.get("compute_capability")
    if cc is not None and not (isinstance(cc, str | float) and re.fullmatch(r"\d+\.\d+", str(cc))):
        raise item.fail(f"must look like '8.9', got {cc!r}", "compute_capability")
    return GpuSpec(
        id="custom-" + (re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"),
        name=name,
        arch="unknown (described in a devices file)",
        compute_capability=None if cc is None else str(cc),
        vram_bytes=total,
        mem_bandwidth_gb_per_s=bandwidth,
        fp16_tflops=item.number(data, "fp16_tflops"),
        source=f"devices file {item.where}",
    )


def _cpu_device(item: _Item, index: int, local_cpu: Callable[[], Device] | None) -> Device:
    raw = item.data["cpu"]
    extra = sorted(set(item.data) - {"cpu", "host"})
    if extra:
        raise item.fail(f"unknown field(s) {extra} next to `cpu:`; put them inside it: cpu: {{ram_gb: ...}}")
    data = {} if raw is None or raw is True else raw
    if not isinstance(data, dict):
        raise item.fail(f"must be a mapping like {{ram_gb: 64, bandwidth_gbs: 51.2}}, got {raw!r}", "cpu")
    item.check_keys(data, _CPU_KEYS, "cpu")
    host = item.data.get("host")
    ram = item.memory_bytes(data, "ram_gb", "ram_gib")
    free = item.memory_bytes(data, "free_gb", "free_gib")
    if ram is None:
        if host is not None:
            raise item.fail("ram_gb is required for a CPU on another host", "cpu.ram_gb")
        if local_cpu is None:
            raise item.fail("ram_gb is required (this machine's RAM is not known here)", "cpu.ram_gb")
        local = local_cpu()
        ram = local.memory_total_bytes
        free = local.memory_free_bytes if free is None else free
    bandwidth = item.number(data, "bandwidth_gbs")
    if bandwidth is None and data.get("memory") is not None:
        try:
            bandwidth = resolve_gpu(f"CPU {data['memory']}").mem_bandwidth_gb_per_s
        except GpumixError as exc:
            raise item.fail(exc.message, "cpu.memory") from None
    threads = data.get("threads")
    if threads is None:
        if local_cpu is None:
            raise item.fail("threads is required (this machine's CPU is not known here)", "cpu.threads")
        threads = local_cpu().threads
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise item.fail(f"must be a whole number >= 1, got {threads!r}", "cpu.threads")
    try:
        return cpu_device(ram, bandwidth or default_cpu_bandwidth_gb_per_s(), threads, free, index=index, host=host)
    except GpumixError as exc:
        raise item.fail(exc.message, "cpu") from None


def load_devices_file(path: str | Path, local_cpu: Callable[[], Device] | None = None) -> list[Device]:
    """Devices described in a YAML file (see the module docstring); errors name the file, item and field.

    `local_cpu` gives this machine's CPU (e.g. `gpumix.hardware.discovery.this_machine_cpu`) for a `cpu:` item
    without ram_gb or threads; without it those fields are required."""
    path = Path(path)
    devices: list[Device] = []
    taken: set[tuple[str | None, int]] = set()
    for position, raw in enumerate(_read_devices_yaml(path)):
        if not isinstance(raw, dict) or ("gpu" in raw) == ("cpu" in raw):
            raise GpumixError(
                f"{path}: devices[{position}]: each item needs exactly one of `gpu:` or `cpu:`, got {raw!r}"
            )
        item = _Item(path, position, raw)
        host = raw.get("host")
        if host is not None and not isinstance(host, str):
            raise item.fail(f"must be text, got {host!r}", "host")
        if "gpu" in raw:
            next_index = 1 + max((i for h, i in taken if h == host and i >= 0), default=-1)
            new = _gpu_devices(item, next_index)
        else:
            new = [_cpu_device(item, -1 - sum(1 for h, i in taken if h == host and i < 0), local_cpu)]
        for device in new:
            if (device.host, device.index) in taken:
                where = f" on host {device.host!r}" if device.host else ""
                raise item.fail(f"index {device.index} is already used{where}", "index")
            taken.add((device.host, device.index))
        devices.extend(new)
    return devices
