"""Build `Device`s: from a catalog card, or for a machine's CPU/RAM. Devices lists (plan files, devices files) go
through gpumix.hardware.entries, which calls these."""

from __future__ import annotations

from gpumix.errors import GpumixError
from gpumix.hardware.catalog import resolve_gpu
from gpumix.hardware.spec import Device, GpuSpec
from gpumix.units import GiB

# Default CPU/RAM bandwidth when nothing better is known: the catalog's dual-channel DDR4-3200 row, 51.2 GB/s
# (JEDEC JESD79-4: 3200 MT/s x 8 B x 2 channels). A conservative desktop figure; override with bandwidth_gb_per_s.
DEFAULT_CPU_BANDWIDTH_ROW = "CPU DDR4-3200 dual-channel"


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
