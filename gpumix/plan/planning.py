"""`Planning`: the typed result of planning — the Plan plus what it was made from (devices, resolved services,
every option considered and the one chosen). Lint and `gpumix explain` read it instead of re-planning."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gpumix.estimate.calibration import Calibration
from gpumix.hardware.spec import Device
from gpumix.plan.candidates import Option
from gpumix.plan.resolve import Resolved
from gpumix.plan.result import Plan
from gpumix.plan.spec import PlanSpec


@dataclass(frozen=True)
class Planning:
    spec: PlanSpec
    plan: Plan
    devices: tuple[Device, ...]
    sockets: Mapping[str, int | None]  # device id → CPU socket / NUMA node, when the plan file says
    services: tuple[Resolved, ...]
    options: tuple[tuple[Option, ...], ...]  # per service: every placement considered (fitting or not)
    chosen: tuple[Option | None, ...]  # per service: the placement the plan runs (KV grown), None = unplaced
    calibration: Calibration
    assigned: tuple[Option | None, ...] = ()  # per service: the option (of `options`) the assignment picked

    def index_of(self, service: str) -> int:
        for svc in self.services:
            if svc.entry.name == service:
                return svc.index
        raise KeyError(service)
