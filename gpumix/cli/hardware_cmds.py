"""`gpumix devices` (what this machine has), `gpumix gpus` and `gpumix cpus` (the catalogs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.table import Table
from rich.text import Text

from gpumix.cli.output import add_row, esc, say, show, styled
from gpumix.errors import GpumixError
from gpumix.hardware.catalog import all_gpus, gpu_candidates, load_catalog
from gpumix.hardware.discovery import INDEX_NOTE, DiscoveredMachine, discover_machine, read_this_machine
from gpumix.hardware.entries import load_devices_file
from gpumix.hardware.names import Named, NameIndex
from gpumix.hardware.platforms import board_catalog, cpu_catalog
from gpumix.hardware.spec import Device, GpuSpec
from gpumix.units import GiB

T = TypeVar("T", bound=Named)

DEVICES_FILE_HELP = (
    "YAML list describing the devices instead of asking the driver, e.g. "
    "'- gpu: RTX 4090' / '- gpu: RTX 5060 Ti 16GB, free_gb: 14' / '- cpu: {ram_gb: 64, bandwidth_gbs: 51.2}'. "
    "The plan file's `devices:` schema (docs/plan-file.md): gpu, index, host, count, free_gb|free_gib, "
    "total_gb|total_gib, uuid, driver, pcie_gen, pcie_lanes, socket (a card not in the catalog: also bandwidth_gbs, "
    "fp16_tflops, compute_capability); cpu: ram_gb|ram_gib, free_gb|free_gib, bandwidth_gbs, memory, threads."
)


def _fmt(value: float | None, spec: str = "g") -> str:
    return "-" if value is None else format(value, spec)


def _device_json(device: Device, catalog_id: str | None, bandwidth: float | None = None) -> dict[str, Any]:
    return {
        "index": device.index,
        "name": device.name,
        "kind": device.kind,
        "catalog_id": catalog_id,
        "host": device.host,
        "uuid": device.uuid,
        "memory_total_bytes": device.memory_total_bytes,
        "memory_free_bytes": device.memory_free_bytes,
        "pcie_gen": device.pcie_gen,
        "pcie_width": device.pcie_width,
        "mem_bandwidth_gb_per_s": device.spec.mem_bandwidth_gb_per_s,
        "nvml_bandwidth_gb_per_s": bandwidth,
        "compute_capability": device.spec.compute_capability,
        "threads": device.threads,
    }


def _machine_json(machine: DiscoveredMachine) -> dict[str, Any]:
    devices = []
    for gpu in machine.gpus:
        entry = _device_json(gpu.device, gpu.catalog_id, gpu.nvml_bandwidth_gb_per_s)
        entry.update(
            nvml_name=gpu.nvml_name,
            pci_bus_id=gpu.pci_bus_id,
            pcie_gen_current=gpu.pcie_gen_current,
            pcie_width_current=gpu.pcie_width_current,
            compute_processes=gpu.compute_processes,
        )
        devices.append(entry)
    return {
        "source": "nvml",
        "driver_version": machine.driver_version,
        "index_order": "PCI_BUS_ID",
        "index_note": machine.index_note,
        "devices": devices,
        "links": [{"a": x.a, "b": x.b, "topology": x.topology, "nvlink_count": x.nvlink_count} for x in machine.links],
        "warnings": machine.warnings,
    }


def _file_json(path: Path, devices: list[Device]) -> dict[str, Any]:
    return {
        "source": f"file:{path}",
        "driver_version": None,
        "index_order": "PCI_BUS_ID",
        "index_note": INDEX_NOTE,
        "devices": [_device_json(d, d.spec.id if d.kind == "gpu" else None) for d in devices],
        "links": [],
        "warnings": [],
    }


def _devices_table(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=Text(title))
    for col in ("#", "name", "catalog", "total GiB", "free GiB", "PCIe", "BW GB/s", "CC", "host"):
        table.add_column(col, justify="right" if col in ("#", "total GiB", "free GiB", "BW GB/s") else "left")
    for row in rows:
        pcie = f"gen{row['pcie_gen']} x{row['pcie_width']}" if row["pcie_gen"] else "-"
        if row.get("pcie_gen_current"):
            pcie += f" (now gen{row['pcie_gen_current']} x{row['pcie_width_current']})"
        add_row(
            table,
            str(row["index"]),
            row.get("nvml_name") or row["name"],
            row["catalog_id"] or (styled("not in catalog", "yellow") if row["kind"] == "gpu" else "-"),
            f"{row['memory_total_bytes'] / GiB:.2f}",
            f"{row['memory_free_bytes'] / GiB:.2f}",
            pcie,
            _fmt(row["nvml_bandwidth_gb_per_s"] or row["mem_bandwidth_gb_per_s"]),
            row["compute_capability"] or "-",
            row["host"] or "-",
        )
    return table


def _topology_table(report: dict[str, Any]) -> Table:
    indices = [d["index"] for d in report["devices"] if d["kind"] == "gpu"]
    labels = {
        (x["a"], x["b"]): (f"NV{x['nvlink_count']}" if x["nvlink_count"] else x["topology"]) for x in report["links"]
    }
    table = Table(title="topology (PIX/PXB good, PHB ok, NODE/SYS slow across CPUs; NV# = NVLink links)")
    table.add_column("")
    for i in indices:
        table.add_column(f"GPU{i}")
    for i in indices:
        cells = ["X" if i == j else labels.get((min(i, j), max(i, j)), "?") for j in indices]
        add_row(table, f"GPU{i}", *cells)
    return table


def devices_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    devices_file: Annotated[Path | None, typer.Option("--devices-file", help=DEVICES_FILE_HELP)] = None,
) -> None:
    """Show this machine's GPUs (NVML): memory free/total, PCIe link, bandwidth, topology and catalog match.

    Indices are PCI bus order, i.e. CUDA_VISIBLE_DEVICES under CUDA_DEVICE_ORDER=PCI_BUS_ID.
    Without an NVIDIA driver, describe the devices in a file and pass --devices-file.
    """
    if devices_file is not None:
        report = _file_json(devices_file, load_devices_file(devices_file, read_this_machine))
    else:
        report = _machine_json(discover_machine())
    if as_json:
        print(json.dumps(report, indent=2))
        return
    driver = f", driver {report['driver_version']}" if report["driver_version"] else ""
    show(_devices_table(report["devices"], f"devices ({report['source']}{driver})"))
    if len(report["links"]) > 0:
        show(_topology_table(report))
    say(styled(report["index_note"], "dim"))
    for warning in report["warnings"]:
        say(f"[yellow]warning:[/] {esc(warning)}")


def _spec_json(spec: GpuSpec) -> dict[str, Any]:
    data = spec.model_dump()
    data["aliases"] = list(spec.aliases)
    data["vram_gib"] = spec.vram_bytes / GiB
    return data


def _matching_specs(query: str | None, include_cpu: bool) -> list[GpuSpec]:
    if not query:
        return all_gpus(include_cpu=include_cpu)
    found = gpu_candidates(query)
    if not found:
        close = load_catalog().suggestions(query)
        raise GpumixError(
            f"no catalog card matches {query!r}" + (f"; closest: {', '.join(close)}" if close else ""),
            hint="run `gpumix gpus` without a query to see all",
        )
    return found


def gpus_cmd(
    query: Annotated[str | None, typer.Argument(help="Part of a name, e.g. '4090', 'H100', 'a100 80gb'.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    include_cpu: Annotated[bool, typer.Option("--cpu", help="Also list the CPU/RAM offload rows.")] = False,
) -> None:
    """List the GPU catalog (names you can use with --gpu, in plan files and devices files)."""
    specs = _matching_specs(query, include_cpu)
    if as_json:
        print(json.dumps([_spec_json(s) for s in specs], indent=2))
        return
    table = Table(title=f"GPU catalog ({len(specs)} cards; VRAM as the vendor prints it, stored as GiB)")
    for col in ("name", "id", "arch", "VRAM GB", "BW GB/s", "FP16 TF", "FP8", "CC", "PCIe", "£/month"):
        table.add_column(col)
    for s in specs:
        add_row(
            table,
            s.name,
            s.id,
            s.arch,
            _fmt(s.vram_bytes / GiB if s.vram_bytes else None, ".0f"),
            _fmt(s.mem_bandwidth_gb_per_s),
            _fmt(s.fp16_tflops),
            "yes" if s.fp8_supported else "no",
            s.compute_capability or "-",
            f"gen{s.pcie_gen} x{s.pcie_lanes}" if s.pcie_gen else "-",
            _fmt(s.price_gbp_per_month),
        )
    show(table)


def _matching(query: str | None, index: NameIndex[T], what: str, command: str) -> list[T]:
    if not query:
        return list(index.items)
    found = index.candidates(query)
    if not found:
        close = index.suggestions(query)
        raise GpumixError(f"no catalog {what} matches {query!r}" + (f"; closest: {', '.join(close)}" if close else ""),
                          hint=f"run `gpumix {command}` without a query to see all")  # fmt: skip
    return found


def cpus_cmd(
    query: Annotated[str | None, typer.Argument(help="Part of a name, e.g. '5800X', 'EPYC 9654', 'M2 Max'.")] = None,
    boards: Annotated[bool, typer.Option("--boards", help="List the board (chipset) slot layouts instead.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List the CPU catalog (names for `cpu: {model: ...}` in plan files) or, with --boards, the board layouts."""
    if boards:
        rows = _matching(query, board_catalog(), "board", "cpus --boards")
        if as_json:
            print(json.dumps([b.model_dump() for b in rows], indent=2))
            return
        table = Table(title=f"board layouts ({len(rows)}): the slot each GPU gets, by number of GPUs")
        for col in ("board", "socket", "layouts", "chipset link"):
            table.add_column(col)
        for b in rows:
            layouts = "; ".join(f"{n}: {' + '.join(s.label for s in slots)}" for n, slots in sorted(b.layouts.items()))
            add_row(table, b.name, b.socket, layouts, b.chipset_link or "-")
        show(table)
        return
    cpus = _matching(query, cpu_catalog(), "CPU", "cpus")
    if as_json:
        print(json.dumps([c.model_dump() for c in cpus], indent=2))
        return
    table = Table(title=f"CPU catalog ({len(cpus)}): RAM GB/s = channels x MT/s x 8 B at the official speed")
    for col in ("name", "cores/threads", "memory", "channels", "RAM GB/s", "PCIe (CPU)", "power W", "socket"):
        table.add_column(col)
    for c in cpus:
        fastest = c.memory[0]
        add_row(
            table, c.name, f"{c.cores}/{c.threads}", ", ".join(m.label for m in c.memory), str(c.memory_channels),
            f"{c.memory_channels * fastest.mts * 8 / 1000:.1f}",
            f"gen{c.pcie_gen} x{c.pcie_lanes_usable}" if c.pcie_gen else "-",
            _fmt(c.max_power_w, ".0f"), c.socket or "-",
        )  # fmt: skip
    show(table)


def register(app: typer.Typer) -> None:
    app.command("devices")(devices_cmd)
    app.command("gpus")(gpus_cmd)
    app.command("cpus")(cpus_cmd)
