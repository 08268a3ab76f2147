"""Re-planning after a host died: put the services it ran on what is left (pure; `gpumix up --ray` calls it).

The lost services are planned again by the same planner, on the surviving devices only, each device's free memory
reduced by what the services still running there hold. Pins that named the dead host (`host:`, `devices:`) are
relaxed — the service is served from elsewhere until its host returns — and a replica is never put on a device
that already serves a copy of the same service (the copy there already takes that device's bandwidth).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from gpumix.errors import GpumixError
from gpumix.estimate.calibration import Calibration
from gpumix.hardware.spec import Device
from gpumix.plan.planner import plan_services
from gpumix.plan.result import Plan
from gpumix.plan.spec import PlanSpec, ServiceEntry


@dataclass(frozen=True)
class LostService:
    """A service (or some of its replicas) that ran on a dead host."""

    name: str  # the plan file's service name
    replicas: int = 1  # processes of it to place again (a split counts as one)
    avoid: tuple[str, ...] = ()  # device ids that still serve a copy of it
    concurrency: int | None = None  # the streams the lost processes served (None: the plan file's concurrency)


def remaining_devices(devices: Sequence[Device], dead_hosts: Collection[str],
                      booked_bytes: Mapping[str, int]) -> list[Device]:  # fmt: skip
    """The devices of the hosts still alive, each with `booked_bytes[device id]` (what the services running there
    hold) taken off its free memory."""
    out = []
    for device in devices:
        if device.host in dead_hosts:
            continue
        free = max(0, device.memory_free_bytes - booked_bytes.get(device.id, 0))
        out.append(device.model_copy(update={"memory_free_bytes": free}))
    return out


def lost_entry(entry: ServiceEntry, lost: LostService, devices: Sequence[Device]) -> ServiceEntry:
    """The plan-file entry of a lost service as re-planned: pinned to the surviving devices it may use (the old
    pins and the devices already serving a copy left out), `replicas` = what was lost, no fallback (the gateway
    keeps the plan's), sized for the streams the lost processes served (a lost replica of two took half the
    service's streams; its stand-in needs KV for that half, not for all of them)."""
    pinned = {str(p) for p in entry.devices or []}
    allowed = [
        d.id for d in devices
        if d.id not in lost.avoid and (not pinned or d.id in pinned or str(d.index) in pinned)
    ]  # fmt: skip
    if pinned and not allowed:  # every pinned device is gone: any surviving device will do
        allowed = [d.id for d in devices if d.id not in lost.avoid]
    mode = entry.mode if lost.replicas > 1 or entry.mode != "replica" else "auto"
    concurrency = entry.concurrency if lost.concurrency is None else max(1, lost.concurrency)
    return entry.model_copy(update={"host": None, "devices": allowed, "replicas": lost.replicas, "mode": mode,
                                    "fallback": None, "concurrency": concurrency})  # fmt: skip


def replan_services(spec: PlanSpec, lost: Sequence[LostService], devices: Sequence[Device], *,
                    calibration: Calibration | None = None, calibration_name: str | None = None,
                    source: str | None = None) -> Plan:  # fmt: skip
    """A Plan of the lost services alone on `devices` (from `remaining_devices`). A service that cannot be placed
    is in the plan unplaced, with its reason in `plan.reasons` (GpumixError only for a name the spec lacks)."""
    by_name = {entry.name: entry for entry in spec.services}
    unknown = [item.name for item in lost if item.name not in by_name]
    if unknown:
        raise GpumixError(f"cannot re-plan {', '.join(unknown)}: not a service of the plan file",
                          hint="re-planning reads the plan file `gpumix up` started from")  # fmt: skip
    if not devices:
        raise GpumixError("no surviving device to re-plan on")
    entries = [lost_entry(by_name[item.name], item, devices) for item in lost]
    sub = spec.model_copy(update={"services": entries})
    # No buying advice: it re-plans many what-ifs (seconds) while the service is down, and a dead host is not a
    # shopping question.
    return plan_services(sub, calibration=calibration, calibration_name=calibration_name, source=source,
                         devices=list(devices), advise=False)  # fmt: skip
