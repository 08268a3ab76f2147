"""Build `Device`s: from a catalog card, or for a machine's CPU/RAM. Devices lists (plan files, devices files) go
through gpumix.hardware.entries, which calls these."""

from __future__ import annotations

import os
from pathlib import Path

from gpumix.errors import GpumixError
from gpumix.hardware.catalog import resolve_gpu
from gpumix.hardware.spec import Device, GpuSpec
from gpumix.units import GiB

# Default CPU/RAM bandwidth when nothing better is known: the catalog's dual-channel DDR4-3200 row, 51.2 GB/s
# (JEDEC JESD79-4: 3200 MT/s x 8 B x 2 channels). A conservative desktop figure; override with bandwidth_gb_per_s.
DEFAULT_CPU_BANDWIDTH_ROW = "CPU DDR4-3200 dual-channel"
MEMINFO_PATH = Path("/proc/meminfo")
CPUINFO_PATH = Path("/proc/cpuinfo")


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


def usable_threads() -> int:
    """CPUs this process may run on (respects taskset/cgroup affinity), not the machine's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def read_meminfo(path: Path = MEMINFO_PATH) -> tuple[int, int]:
    """(MemTotal, MemAvailable) in bytes from /proc/meminfo (whose 'kB' means KiB)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise GpumixError(
            f"cannot read {path} to size this machine's RAM: {exc.strerror}",
            hint="describe the CPU in a devices file: `- cpu: {ram_gb: 64, bandwidth_gbs: 51.2}`",
        ) from None
    fields: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            fields[name.strip()] = int(parts[0]) * 1024
    if "MemTotal" not in fields:
        raise GpumixError(f"{path} has no MemTotal line")
    return fields["MemTotal"], fields.get("MemAvailable", fields.get("MemFree", fields["MemTotal"]))


def read_cpu_model_name(path: Path = CPUINFO_PATH) -> str | None:
    """This machine's CPU as the OS names it (/proc/cpuinfo "model name", x86 Linux); None where it is not there."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip().lower() == "model name" and value.strip():
            return value.strip()
    return None


def this_machine_cpu(
    bandwidth_gb_per_s: float | None = None, threads: int | None = None, meminfo_path: Path = MEMINFO_PATH
) -> Device:
    """This machine's CPU and RAM: total = MemTotal, free = MemAvailable; bandwidth defaults to DDR4-3200 x2."""
    total, available = read_meminfo(meminfo_path)
    return cpu_device(
        ram_bytes=total,
        bandwidth_gb_per_s=bandwidth_gb_per_s or default_cpu_bandwidth_gb_per_s(),
        threads=threads or usable_threads(),
        free_bytes=available,
    )
