"""Discover this machine: its NVIDIA GPUs through NVML (package nvidia-ml-py, module `pynvml`), its CPU and RAM
(/proc/meminfo, CPU affinity). The one module of the core that reads the machine it runs on; the planner and the
estimator never import it — the CLI discovers and passes `Device`s in.

Indices: CUDA numbers GPUs fastest-first unless CUDA_DEVICE_ORDER=PCI_BUS_ID; NVML and nvidia-smi list them in PCI bus
order. Every index gpumix prints is the PCI-bus-order rank, i.e. what CUDA_VISIBLE_DEVICES means under
CUDA_DEVICE_ORDER=PCI_BUS_ID, which gpumix sets for every engine it launches (UUIDs are printed too; they sidestep
ordering entirely). API references: ../shared/reference/engines.md section 9.
"""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import BaseModel, ConfigDict

from gpumix.errors import GpumixError
from gpumix.hardware.catalog import match_by_name_and_memory
from gpumix.hardware.devices import cpu_device, default_cpu_bandwidth_gb_per_s
from gpumix.hardware.entries import LocalMachine, ThisMachine, this_machine_cpu_device
from gpumix.hardware.spec import Device, GpuSpec

INDEX_NOTE = (
    "indices are PCI bus order (as nvidia-smi): use them with CUDA_DEVICE_ORDER=PCI_BUS_ID, or use the UUIDs, "
    "in CUDA_VISIBLE_DEVICES"
)
MEMINFO_PATH = Path("/proc/meminfo")
CPUINFO_PATH = Path("/proc/cpuinfo")
NO_DRIVER_HINT = "describe the devices in a YAML file and pass --devices-file FILE (see `gpumix devices --help`)"
# nvmlDeviceGetTopologyCommonAncestor levels -> nvidia-smi topo labels (engines.md section 9).
TOPOLOGY_LABELS = {0: "BOARD", 10: "PIX", 20: "PXB", 30: "PHB", 40: "NODE", 50: "SYS"}
NVML_CLOCK_MEM = 2
NVLINK_MAX_LINKS = 36  # NVML_NVLINK_MAX_LINKS in nvidia-ml-py 13.x
NVML_FEATURE_ENABLED = 1


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DiscoveredGpu(_Frozen):
    device: Device  # index = PCI-bus-order rank; memory totals/free straight from NVML
    nvml_index: int
    nvml_name: str
    catalog_id: str | None  # None: not in the catalog, `device.spec` was built from NVML's numbers
    pci_bus_id: str
    pcie_gen_current: int | None = None  # drops at idle; pcie_gen_max is what the link can do
    pcie_width_current: int | None = None
    pcie_gen_max: int | None = None
    pcie_width_max: int | None = None
    nvml_bandwidth_gb_per_s: float | None = None  # bus width x max memory clock x 2 (DDR), decimal GB/s
    compute_processes: int | None = None  # other processes holding memory on this GPU (counted against free)


class GpuLink(_Frozen):
    a: int  # device indices (PCI order)
    b: int
    topology: str  # PIX | PXB | PHB | NODE | SYS | BOARD (nvidia-smi topo -m labels)
    nvlink_count: int = 0

    @property
    def label(self) -> str:
        return f"NV{self.nvlink_count}" if self.nvlink_count else self.topology


class DiscoveredMachine(_Frozen):
    gpus: list[DiscoveredGpu]
    links: list[GpuLink]
    driver_version: str | None
    index_note: str = INDEX_NOTE
    warnings: list[str] = []

    @property
    def devices(self) -> list[Device]:
        return [g.device for g in self.gpus]

    def link(self, a: int, b: int) -> GpuLink | None:
        for link in self.links:
            if {link.a, link.b} == {a, b}:
                return link
        return None


def _load_pynvml() -> ModuleType:
    try:
        return importlib.import_module("pynvml")
    except ImportError:
        raise GpumixError("NVML bindings are not installed (package nvidia-ml-py)", hint=NO_DRIVER_HINT) from None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _optional(nvml: ModuleType, call: str, *args: Any) -> Any:
    """An NVML query that some cards/drivers do not support (NotSupported, NoPermission, ...): None then."""
    try:
        return getattr(nvml, call)(*args)
    except nvml.NVMLError:
        return None


def _bus_key(bus_id: str) -> str:
    """'00000000:0A:00.0' and '0000:0a:00.0' compare equal: lower-case, domain without leading zeros."""
    domain, _, rest = bus_id.lower().partition(":")
    return f"{int(domain, 16) if re.fullmatch(r'[0-9a-f]+', domain) else domain}:{rest}"


def _nvml_bandwidth(nvml: ModuleType, handle: Any) -> float | None:
    bus_bits = _optional(nvml, "nvmlDeviceGetMemoryBusWidth", handle)
    mem_mhz = _optional(nvml, "nvmlDeviceGetMaxClockInfo", handle, getattr(nvml, "NVML_CLOCK_MEM", NVML_CLOCK_MEM))
    if not bus_bits or not mem_mhz:
        return None
    # engines.md section 9: GB/s = bits/8 x MHz x 2 / 1000 (H100 SXM: 5120 b, 2619 MHz -> 3352 GB/s).
    return round(float(bus_bits) / 8 * float(mem_mhz) * 2 / 1000, 1)


def _spec_from_nvml(name: str, total_bytes: int, cc: str | None, bandwidth: float | None, gen: int | None,
                    width: int | None) -> GpuSpec:  # fmt: skip
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return GpuSpec(
        id=f"nvml-{slug}",
        name=name,
        arch="unknown (not in the gpumix catalog)",
        compute_capability=cc,
        vram_bytes=total_bytes,
        mem_bandwidth_gb_per_s=bandwidth or 0.0,
        pcie_gen=gen,
        pcie_lanes=width,
        source="NVML on this machine (card not in the catalog): memory total, bus width x memory clock",
    )


def _probe_gpu(nvml: ModuleType, nvml_index: int, driver: str | None) -> tuple[Any, dict[str, Any]]:
    handle = nvml.nvmlDeviceGetHandleByIndex(nvml_index)
    name = _text(nvml.nvmlDeviceGetName(handle))
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)  # .free already excludes other processes' allocations
    cc_pair = _optional(nvml, "nvmlDeviceGetCudaComputeCapability", handle)
    processes = _optional(nvml, "nvmlDeviceGetComputeRunningProcesses", handle)
    probe = {
        "nvml_index": nvml_index,
        "nvml_name": name,
        "uuid": _text(nvml.nvmlDeviceGetUUID(handle)),
        "pci_bus_id": _text(nvml.nvmlDeviceGetPciInfo(handle).busId),
        "total": int(memory.total),
        "free": int(memory.free),
        "cc": f"{cc_pair[0]}.{cc_pair[1]}" if cc_pair else None,
        "gen_cur": _optional(nvml, "nvmlDeviceGetCurrPcieLinkGeneration", handle),
        "width_cur": _optional(nvml, "nvmlDeviceGetCurrPcieLinkWidth", handle),
        "gen_max": _optional(nvml, "nvmlDeviceGetMaxPcieLinkGeneration", handle),
        "width_max": _optional(nvml, "nvmlDeviceGetMaxPcieLinkWidth", handle),
        "bandwidth": _nvml_bandwidth(nvml, handle),
        "processes": None if processes is None else len(processes),
        "driver": driver,
    }
    return handle, probe


def _catalog_spec(probe: dict[str, Any], warnings: list[str]) -> tuple[GpuSpec, str | None]:
    name, total = probe["nvml_name"], probe["total"]
    spec = match_by_name_and_memory(name, total)
    if spec is not None:
        return spec, spec.id
    warnings.append(
        f"GPU {probe['pci_bus_id']} {name!r} ({total / 2**30:.1f} GiB) is not in the gpumix catalog; "
        "using NVML's numbers (no compute throughput: speed estimates for it are bandwidth-only)"
        + ("" if probe["bandwidth"] else "; NVML gave no memory bus width/clock, so its bandwidth is unknown (0)")
    )
    built = _spec_from_nvml(name, total, probe["cc"], probe["bandwidth"], probe["gen_max"], probe["width_max"])
    return built, None


def _discovered(probe: dict[str, Any], index: int, warnings: list[str]) -> DiscoveredGpu:
    spec, catalog_id = _catalog_spec(probe, warnings)
    device = Device(
        index=index,
        spec=spec,
        memory_total_bytes=probe["total"],
        memory_free_bytes=probe["free"],
        uuid=probe["uuid"],
        pcie_gen=probe["gen_max"],
        pcie_width=probe["width_max"],
        driver_version=probe["driver"],
    )
    return DiscoveredGpu(
        device=device,
        nvml_index=probe["nvml_index"],
        nvml_name=probe["nvml_name"],
        catalog_id=catalog_id,
        pci_bus_id=probe["pci_bus_id"],
        pcie_gen_current=probe["gen_cur"],
        pcie_width_current=probe["width_cur"],
        pcie_gen_max=probe["gen_max"],
        pcie_width_max=probe["width_max"],
        nvml_bandwidth_gb_per_s=probe["bandwidth"],
        compute_processes=probe["processes"],
    )


def _nvlink_count(nvml: ModuleType, handle: Any, peer_bus_id: str) -> int:
    count = 0
    max_links = getattr(nvml, "NVML_NVLINK_MAX_LINKS", NVLINK_MAX_LINKS)
    enabled = getattr(nvml, "NVML_FEATURE_ENABLED", NVML_FEATURE_ENABLED)
    for link in range(max_links):
        try:
            if nvml.nvmlDeviceGetNvLinkState(handle, link) != enabled:
                continue
            remote = _text(nvml.nvmlDeviceGetNvLinkRemotePciInfo(handle, link).busId)
        except nvml.NVMLError:
            break  # NotSupported (no NVLink on this card) or past the last link
        if _bus_key(remote) == _bus_key(peer_bus_id):
            count += 1
    return count


def _links(nvml: ModuleType, handles: list[Any], gpus: list[DiscoveredGpu]) -> list[GpuLink]:
    links = []
    for i in range(len(gpus)):
        for j in range(i + 1, len(gpus)):
            level = _optional(nvml, "nvmlDeviceGetTopologyCommonAncestor", handles[i], handles[j])
            links.append(
                GpuLink(
                    a=gpus[i].device.index,
                    b=gpus[j].device.index,
                    topology=TOPOLOGY_LABELS.get(level, "unknown") if level is not None else "unknown",
                    nvlink_count=_nvlink_count(nvml, handles[i], gpus[j].pci_bus_id),
                )
            )
    return links


def _environment_warnings() -> list[str]:
    warnings = []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        warnings.append(
            f"CUDA_VISIBLE_DEVICES={visible!r} is set; NVML ignores it, so all GPUs and their physical indices are listed"
        )
    return warnings


def discover_machine(nvml: ModuleType | None = None) -> DiscoveredMachine:
    """Every NVIDIA GPU on this machine, matched to the catalog; GpumixError (with a devices-file hint) without NVML."""
    nvml = nvml or _load_pynvml()
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        raise GpumixError(f"no NVIDIA driver found: NVML did not start ({_text(exc)})", hint=NO_DRIVER_HINT) from None
    try:
        return _discover(nvml)
    except nvml.NVMLError as exc:
        raise GpumixError(f"NVML query failed: {_text(exc)}", hint=NO_DRIVER_HINT) from None
    finally:
        _optional(nvml, "nvmlShutdown")


def _discover(nvml: ModuleType) -> DiscoveredMachine:
    driver = _optional(nvml, "nvmlSystemGetDriverVersion")
    driver = _text(driver) if driver is not None else None
    count = nvml.nvmlDeviceGetCount()
    if count == 0:
        raise GpumixError("the NVIDIA driver is loaded but reports no GPUs", hint=NO_DRIVER_HINT)
    warnings = _environment_warnings()
    probed = [_probe_gpu(nvml, i, driver) for i in range(count)]
    # CUDA's PCI_BUS_ID order is the sort order of bus ids; NVML normally enumerates the same way.
    probed.sort(key=lambda hp: _bus_key(hp[1]["pci_bus_id"]))
    if [p["nvml_index"] for _, p in probed] != list(range(count)):
        warnings.append("NVML's enumeration differs from PCI bus order; indices shown follow PCI bus order (CUDA's)")
    gpus = [_discovered(probe, index, warnings) for index, (_, probe) in enumerate(probed)]
    return DiscoveredMachine(
        gpus=gpus, links=_links(nvml, [h for h, _ in probed], gpus), driver_version=driver, warnings=warnings
    )


def this_machine_gpus() -> list[Device]:
    """This machine's GPUs as planner devices."""
    return [g.device for g in discover_machine().gpus]


# ---------------------------------------------------------------------------------------------- CPU and RAM


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


def read_this_machine() -> ThisMachine:
    """This machine's RAM (MemTotal, MemAvailable), the threads this process may use, and its CPU model name."""
    total, available = read_meminfo()
    return ThisMachine(total, available, usable_threads(), read_cpu_model_name())


def this_machine_devices() -> list[Device]:
    """This machine's GPUs and its CPU + RAM (its own CPU model where the CPU catalog knows it, for CPU offload):
    what `gpumix plan` and `gpumix up` use for a plan file without `devices:`."""
    return [*this_machine_gpus(), this_machine_cpu_device(read_this_machine)]


# What the CLI passes to the planner and the devices-file reader: the core never reads the machine itself.
LOCAL_MACHINE = LocalMachine(devices=this_machine_devices, cpu=read_this_machine)
