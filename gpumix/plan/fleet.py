"""Plan-file devices → `Device`s (or this machine's, by discovery), the links between devices of a group, and
what each card costs per month."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from gpumix.errors import GpumixError
from gpumix.estimate.types import Links
from gpumix.hardware.entries import LocalMachine, devices_from_entries
from gpumix.hardware.spec import Device
from gpumix.plan.spec import LinksEntry, PlanSpec
from gpumix.yaml_input import SourceLines, did_you_mean, located_error

Discover = LocalMachine  # this machine's GPUs and CPU, read by the CLI (hardware.discovery.LOCAL_MACHINE), never here


# What makes two devices plan alike: catalog id, kind, free bytes, PCIe generation and width, threads.
DeviceClass = tuple[str, str, int, int | None, int | None, int | None]


def device_class(device: Device) -> DeviceClass:
    """What makes two devices plan alike (identical cards of a fleet share estimates)."""
    return (device.spec.id, device.kind, device.memory_free_bytes, device.pcie_gen, device.pcie_width, device.threads)


def build_devices(spec: PlanSpec, source: str, lines: SourceLines,
                  discover: Discover | None = None) -> tuple[list[Device], dict[str, int | None]]:  # fmt: skip
    """Devices of the plan file (the one devices schema, gpumix.hardware.entries) or of this machine (from
    `discover`), and each device's CPU socket when the file gives it."""
    if spec.devices is None:
        return discovered_devices(source, discover), {}
    found = devices_from_entries(spec.devices, source, lines, None if discover is None else discover.cpu)
    return found.devices, found.sockets


def check_service_hosts(spec: PlanSpec, devices: Sequence[Device], source: str, lines: SourceLines) -> None:
    """A service pinned to a host (`host:`) names one of the devices' hosts."""
    hosts = sorted({d.host for d in devices if d.host is not None})
    for i, entry in enumerate(spec.services):
        if entry.host is not None and entry.host not in hosts:
            raise located_error(source, lines, ("services", i, "host"), f"no device is on host {entry.host!r}"
                                + did_you_mean(entry.host, hosts), hint=f"hosts: {', '.join(hosts) or 'none'}")  # fmt: skip


def check_host_entries(spec: PlanSpec, devices: Sequence[Device], source: str, lines: SourceLines) -> None:
    """Every `hosts:` entry names a host of the devices."""
    hosts = sorted({d.host for d in devices if d.host is not None})
    for name in spec.hosts:
        if name not in hosts:
            raise located_error(source, lines, ("hosts", name), f"no device is on host {name!r}"
                                + did_you_mean(name, hosts), hint=f"hosts: {', '.join(hosts) or 'none (use psu_w: at the top level)'}")  # fmt: skip


def discovered_devices(source: str, discover: Discover | None) -> list[Device]:
    if discover is None:
        raise GpumixError(f"{source}: the plan file has no `devices:`",
                          hint="add a `devices:` list, e.g. devices: [{gpu: RTX 4090}, {gpu: RTX 5060 Ti 16GB}]")  # fmt: skip
    try:
        return list(discover.devices())
    except GpumixError as exc:
        raise GpumixError(
            f"the plan file has no `devices:` and this machine's GPUs cannot be read: {exc.message}",
            hint="add a `devices:` list to the plan file, e.g. devices: [{gpu: RTX 4090}, {gpu: RTX 5060 Ti 16GB}]",
        ) from None


def device_pcie(links: LinksEntry | None, device: Device) -> tuple[int, int]:
    """(generation, lanes) of one device's PCIe link: the plan file's `links:` override the device's own."""
    gen = (links.pcie_gen if links else None) or device.pcie_gen or 4
    lanes_cfg = links.pcie_lanes if links else None
    lanes = lanes_cfg[device.index] if lanes_cfg and 0 <= device.index < len(lanes_cfg) else (device.pcie_width or 16)
    return gen, lanes


def links_for(spec: PlanSpec, group: Sequence[Device], sockets: Mapping[str, int | None]) -> Links:
    """Interconnect of one device group: the file's links, each device's own PCIe link, NVLink, topology."""
    cfg = spec.links
    pcie = [device_pcie(cfg, d) for d in group]
    socks = {sockets.get(d.id) for d in group} - {None}
    topology = (cfg.topology if cfg and cfg.topology else None) or ("SYS" if len(socks) > 1 else "PHB")
    hosts = {d.host for d in group}
    network = cfg.network_gbs if cfg and cfg.network_gbs else (1.25 if len(hosts) > 1 else None)  # 10 GbE
    return Links(
        pcie_gen=min(gen for gen, _ in pcie),  # a hop runs at the slower end's generation
        pcie_lanes=tuple(lanes for _, lanes in pcie),
        nvlink=bool(cfg and cfg.nvlink),
        nvlink_gb_per_s=(cfg.nvlink_gbs or 0.0) if cfg else 0.0,
        topology=topology,
        network_gb_per_s=network,
    )


def device_price(device: Device, spec: PlanSpec) -> float | None:
    from gpumix.hardware.catalog import resolve_gpu

    for name, price in spec.prices.items():
        try:
            if resolve_gpu(name).id == device.spec.id:
                return price.gbp_per_month
        except GpumixError:
            if name.lower() in (device.spec.name.lower(), device.spec.id.lower()):
                return price.gbp_per_month
    return device.spec.price_gbp_per_month if device.kind == "gpu" else None


