"""`gpumix status`: what the supervisor runs, probed live, plus per-device load and split-imbalance advice."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import psutil

from gpumix.plan.result import Plan, read_plan_json
from gpumix.run.gpuinfo import GpuReading, read_gpus
from gpumix.run.state import RunState, read_state
from gpumix.run.up import supervisor_alive

# A device at or above BUSY_PCT while another device of the same split sits at or below IDLE_PCT is imbalanced.
BUSY_PCT = 60.0
IDLE_PCT = 15.0


@dataclass(frozen=True)
class ProcessReport:
    name: str
    service: str
    state: str
    pid: int | None
    port: int
    restarts: int
    uptime_s: float | None
    health: str  # "ok", "down", or the HTTP status
    rss_bytes: int | None
    cpu_pct: float | None
    log: str


@dataclass(frozen=True)
class DeviceReport:
    id: str  # plan device id (gpu0, HOST/gpu1)
    name: str
    kind: str
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    utilisation_pct: float | None
    source: str  # "nvml" | "process rss" | "unavailable"


@dataclass(frozen=True)
class StatusReport:
    run_dir: str
    supervisor_pid: int
    running: bool
    front_port: int | None
    message: str | None
    processes: list[ProcessReport]
    devices: list[DeviceReport]
    advice: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def probe(url: str) -> str:
    try:
        code = httpx.get(url, timeout=1.0).status_code
    except httpx.HTTPError:
        return "down"
    return "ok" if code == 200 else str(code)


def _sample_usage(pids: list[int | None], sample_s: float) -> dict[int, tuple[int, float]]:
    """RSS and CPU% (summed over each process and its children) for every pid, from one shared sample window."""
    groups: dict[int, list[psutil.Process]] = {}
    for pid in pids:
        if pid is None:
            continue
        try:
            proc = psutil.Process(pid)
            groups[pid] = [proc, *proc.children(recursive=True)]
            for p in groups[pid]:
                p.cpu_percent(None)
        except psutil.Error:
            continue
    time.sleep(sample_s)
    usage = {}
    for pid, group in groups.items():
        try:
            usage[pid] = (sum(p.memory_info().rss for p in group), sum(p.cpu_percent(None) for p in group))
        except psutil.Error:
            continue
    return usage


def process_reports(state: RunState, sample_s: float = 0.2) -> list[ProcessReport]:
    now = time.time()
    usage = _sample_usage([p.pid for p in state.processes], sample_s)
    reports = []
    for proc in state.processes:
        rss, cpu = usage.get(proc.pid, (None, None)) if proc.pid else (None, None)
        reports.append(
            ProcessReport(
                name=proc.name, service=proc.service, state=proc.state, pid=proc.pid, port=proc.port,
                restarts=proc.restarts, uptime_s=now - proc.started_at if proc.started_at and proc.pid else None,
                health=probe(proc.health_url) if proc.pid else "down", rss_bytes=rss, cpu_pct=cpu, log=proc.log,
            )  # fmt: skip
        )
    return reports


def device_reports(plan: Plan, processes: list[ProcessReport], state: RunState, gpus: list[GpuReading] | None) -> list[DeviceReport]:
    """The devices of this run's host: GPUs from NVML (matched by UUID, else by index); a CPU device reports the
    summed RSS and CPU% of the processes placed on it."""
    by_index = {g.index: g for g in gpus or []}
    by_uuid = {g.uuid: g for g in gpus or []}
    reports = []
    for dev in (d for d in plan.devices if d.host == state.host):
        if dev.kind == "gpu":
            gpu = by_uuid.get(dev.uuid) if dev.uuid else by_index.get(dev.index)
            if gpu is None:
                reports.append(DeviceReport(dev.id, dev.name, "gpu", None, dev.memory_total_bytes, None, "unavailable"))
            else:
                reports.append(DeviceReport(dev.id, dev.name, "gpu", gpu.memory_used_bytes, gpu.memory_total_bytes,
                                            gpu.utilisation_pct, "nvml"))  # fmt: skip
            continue
        on_device = {p.name for p in state.processes if dev.id in p.devices}
        mine = [r for r in processes if r.name in on_device and r.rss_bytes is not None]
        rss = sum(r.rss_bytes or 0 for r in mine)
        cpu = sum(r.cpu_pct or 0.0 for r in mine) / (psutil.cpu_count() or 1)  # share of all cores
        reports.append(DeviceReport(dev.id, dev.name, "cpu", rss, dev.memory_total_bytes, cpu, "process rss"))
    return reports


def imbalance_advice(plan: Plan, devices: list[DeviceReport]) -> list[str]:
    """For a layer split: one device busy while another idles means the split gives the idle one too little.

    Decode through a layer split visits the devices in turn (VISION.md, asymmetric pair), so with work queued
    both should be busy; shifting layers toward the idle device shortens the busy one's stage."""
    util = {d.id: d.utilisation_pct for d in devices if d.utilisation_pct is not None}
    advice = []
    for svc in plan.services:
        if svc.mode not in ("layer_split", "pipeline_parallel") or len(svc.devices) < 2:
            continue
        readings = [(i, util[i]) for i in svc.devices if i in util]
        if len(readings) < 2:
            continue
        busy = max(readings, key=lambda r: r[1])
        idle = min(readings, key=lambda r: r[1])
        if busy[1] >= BUSY_PCT and idle[1] <= IDLE_PCT:
            busy_name, idle_name = plan.device(busy[0]).name, plan.device(idle[0]).name
            advice.append(
                f"{svc.name}: device {busy[0]} ({busy_name}) is {busy[1]:.0f}% busy while device {idle[0]} "
                f"({idle_name}) is {idle[1]:.0f}%: shift the split toward device {idle[0]} (more layers there, "
                f"e.g. raise its -ts share; now {svc.tensor_split or svc.layers or svc.split})"
            )
    return advice


def status(run_dir: Path, sample_s: float = 0.2) -> StatusReport | None:
    state = read_state(run_dir)
    if state is None:
        return None
    plan = read_plan_json(Path(state.plan_path))
    running = supervisor_alive(state)
    processes = process_reports(state, sample_s) if running else [
        ProcessReport(p.name, p.service, "stopped", None, p.port, p.restarts, None, "down", None, None, p.log)
        for p in state.processes
    ]  # fmt: skip
    devices = device_reports(plan, processes, state, read_gpus())
    return StatusReport(
        run_dir=str(run_dir), supervisor_pid=state.supervisor_pid, running=running, front_port=state.front_port,
        message=state.message, processes=processes, devices=devices, advice=imbalance_advice(plan, devices),
    )  # fmt: skip
