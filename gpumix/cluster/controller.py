"""The `up --ray` controller: watches the hosts through Ray and keeps a deployment serving — a dead host's parts
leave the gateway at once and its services are re-planned on what is left; a split whose part died restarts
as a whole; services return when their host does (or stay moved with --no-return)."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gpumix.cluster.agent import reserve_group
from gpumix.cluster.deploy import Part, as_replica, parts_of_process, ray_env_for
from gpumix.cluster.deployment import Deployment
from gpumix.cluster.driver import DIED, alive_hosts, describe_many, never_healthy, remove_placement_group, stop_agents
from gpumix.cluster.status import HostReport, host_reports
from gpumix.errors import GpumixError
from gpumix.estimate.calibration import Calibration
from gpumix.hardware.spec import Device
from gpumix.launch.commands import process_devices, process_kv, render_processes
from gpumix.plan.result import Plan
from gpumix.plan.spec import PlanSpec


# ---- the controller ----------------------------------------------------------------------------------------
class Controller:
    """Watches hosts through Ray and keeps the deployment serving (one tick every `tick_s`)."""

    def __init__(self, deployment: Deployment, spec_file: Path | None) -> None:
        self.d = deployment
        self.spec: PlanSpec | None = None
        self.devices: list[Device] = []
        self.calibration: Calibration | None = None
        if spec_file is not None:
            self._load_spec(spec_file)

    def _load_spec(self, path: Path) -> None:
        from gpumix.calibrate.files import load_calibration
        from gpumix.hardware.discovery import LOCAL_MACHINE
        from gpumix.plan.fleet import build_devices
        from gpumix.plan.spec import load_plan_with_lines

        try:
            spec, lines = load_plan_with_lines(path)
            self.devices, _ = build_devices(spec, str(path), lines, LOCAL_MACHINE)
            recorded = self.d.plan.calibration  # re-plan with the calibration the plan was made with
            self.calibration = load_calibration(Path(recorded) if recorded else None)
            self.spec = spec
        except GpumixError as exc:
            self.spec = None
            self.d.say(f"re-planning is off: {exc.message}")

    def run(self, stop: threading.Event) -> None:
        """Ray's node table every host_poll_s (a dead host leaves the gateway within that of Ray saying so); the
        agents' reports, re-planning and returns every tick_s."""
        next_tick = time.monotonic() + self.d.options.tick_s
        while not stop.wait(self.d.options.host_poll_s):
            try:
                alive = alive_hosts(host_reports(self.d.ray))
                self._hosts(alive)
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + self.d.options.tick_s
                    self.tick(alive)
            except Exception as exc:  # one bad tick (a Ray hiccup) must not end the controller
                self.d.say(f"controller: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}")

    def tick(self, alive: Mapping[str, HostReport]) -> None:
        d, run = self.d, self.d.run
        self._hosts(alive)
        live = {p.name: d.handles[p.name] for p in run.parts
                if not p.dropped and p.host in alive and p.name in d.handles and p.group not in d.down_groups}  # fmt: skip
        # A short wait: an agent that does not answer in time keeps its state (its call stays in flight), and the
        # next tick's look at Ray's node table must not wait on agents of a host that just died.
        reports = describe_many(d.ray, live, timeout_s=d.options.tick_s, inflight=d.inflight)
        healthy = {n for n, r in reports.items() if isinstance(r, dict) and r["healthy"]}
        self._groups(alive, reports)
        self._lost(alive)
        self._pending(healthy, reports)
        self._returns(healthy, alive)
        self._drain()
        previous = set(d.serving)
        d.serving = {n for n in d.serving | healthy if n in live and n not in d.draining
                     and (n in healthy or reports.get(n) is None)}  # fmt: skip
        if d.serving != previous:
            d.write_backends()
            d.save()

    # ---- hosts -----------------------------------------------------------------------------------------------
    def _hosts(self, alive: Mapping[str, HostReport]) -> None:
        d, run = self.d, self.d.run
        hosts = {p.host for p in run.parts if not p.dropped}
        dead = sorted(h for h in hosts if h not in alive)
        for host in dead:
            if host not in run.dead_hosts:
                lost = [p.part for p in run.parts if p.host == host and not p.dropped]
                d.serving -= {p.name for p in run.parts if p.host == host}
                run.dead_hosts = sorted({*run.dead_hosts, host})
                d.write_backends()  # out of the gateway's table (and requests waiting there failed over) first
                d.event("host-dead", f"host {host} is dead (Ray); its parts {', '.join(lost)} left the gateway")
        for host in run.dead_hosts:
            if host in alive:
                d.event("host-back", f"host {host} is back ({alive[host].node_ip})")
                self.d.handled -= {p.name for p in run.parts if p.host == host}
        run.dead_hosts = dead
        d.write_backends()
        self._stop_split_groups(dead)

    def _stop_split_groups(self, dead: Sequence[str]) -> None:
        """A split that lost a host is down as a whole: its other members are stopped and its reservation freed
        (it is re-planned like any lost service, and started again once every host of it is back)."""
        d = self.d
        for name, members in d.run.groups().items():
            if name in d.down_groups or not any(p.host in dead for p in members):
                continue
            group = d.groups.pop(name, None)
            if group is not None:
                stop_agents(d.ray, group.handles, timeout_s=20)
                remove_placement_group(group)
            for p in members:
                d.handles.pop(p.name, None)
                d.inflight.pop(p.name, None)
            d.down_groups.add(name)
            d.event("restarted", f"split {name} stopped: host {', '.join(sorted({p.host for p in members} & set(dead)))} of it died")

    def _groups(self, alive: Mapping[str, HostReport], reports: Mapping[str, Any]) -> None:
        """Restart a split together when one member died; bring a down split back once all its hosts are."""
        d = self.d
        for name, members in d.run.groups().items():
            if not all(p.host in alive for p in members):
                continue
            if name in d.down_groups:
                if d.run.no_return and any(p.origin == "plan" for p in members):
                    continue
                d.groups[name] = reserve_group(name, [d.agent_spec(p) for p in members], timeout_s=60)
                d._start_group_agents(d.groups[name])
                d.down_groups.discard(name)
                d.event("restarted", f"split {name} started again on {', '.join(sorted({p.host for p in members}))}")
            elif any(reports.get(p.name) == DIED for p in members):
                died = [p.part for p in members if reports.get(p.name) == DIED]
                d.restart_group(name)
                d.event("restarted", f"split {name}: {', '.join(died)} died; all {len(members)} parts restarted together")

    # ---- a dead host's services --------------------------------------------------------------------------------
    def _lost(self, alive: Mapping[str, HostReport]) -> None:
        d, run = self.d, self.d.run
        lost = [p for p in run.parts if not p.dropped and p.host not in alive and p.name not in d.handled]
        if not lost:
            return
        d.handled |= {p.name for p in lost}
        if self.spec is None:
            d.event("unplaced", f"{', '.join(sorted({p.service for p in lost}))}: not moved (re-planning is off: "
                    "no plan file)")  # fmt: skip
            return
        self.replan(lost, alive)

    def replan(self, lost: Sequence[Part], alive: Mapping[str, HostReport]) -> None:
        from gpumix.plan.replan import LostService, remaining_devices, replan_services

        d, run = self.d, self.d.run
        dead = set(run.dead_hosts)
        standing = [p for p in run.parts if not p.dropped and p.host in alive and p.group not in d.down_groups]
        booked: dict[str, int] = {}
        for part in standing:
            for device_id, nbytes in part.memory_bytes.items():
                booked[device_id] = booked.get(device_id, 0) + nbytes
        by_service: dict[str, list[Part]] = {}
        for part in lost:
            if part.origin == "moved":  # a stand-in died with its host: what it replaced is re-planned next tick
                self._remove([part])
                d.handled -= set(part.replaces)
                continue
            by_service.setdefault(part.service, []).append(part)
        items = []
        for service, parts in by_service.items():
            replicas = sorted({p.replica for p in parts})
            avoid = tuple(sorted({dev for p in standing if p.service == service for dev in p.devices}))
            streams = sum(process_kv(d.plan.service(service), r)[0] for r in replicas)  # what the stand-ins must take
            items.append((LostService(service, len(replicas), avoid, streams), replicas, parts))
        if not items:
            return
        devices = remaining_devices(self.devices, dead, booked)
        started = time.monotonic()
        assert self.spec is not None, "replan runs only with a plan file"
        new = replan_services(self.spec, [i[0] for i in items], devices, calibration=self.calibration,
                              calibration_name=d.plan.calibration, source=str(self.d.options.spec_file))  # fmt: skip
        for item, replicas, parts in items:
            self._place(new, item, replicas, parts, standing, time.monotonic() - started)
        d.save()

    def _place(self, new: Plan, item: Any, replicas: list[int], parts: list[Part], standing: Sequence[Part],
               replan_s: float) -> None:  # fmt: skip
        d, run = self.d, self.d.run
        service = new.service(item.name)
        original = self.d.plan.service(item.name)
        still = sorted({p.part for p in standing if p.service == item.name})
        if not service.devices:
            reason = next((r for r in new.reasons if r.startswith(f"{item.name} ")), "no device can run it")
            if still:
                lost_names = ", ".join(p.part for p in parts)
                d.event("degraded", f"{item.name}: {lost_names} lost with host {', '.join(sorted({p.host for p in parts}))}; "
                        f"still served by {', '.join(still)}; no other surviving device can take another replica")  # fmt: skip
            else:
                d.event("unplaced", f"{item.name}: could not be placed on the surviving hosts: {reason}")
            return
        ports = iter(range(run.next_port, run.next_port + 1000))
        for k, devices in enumerate(process_devices(service)):
            replica = replicas[k] if k < len(replicas) else k
            view = as_replica(new, item.name, k, replica)  # rendered, named and sized as the replica it replaces
            specs = render_processes(view, view.service(item.name), replica, max(1, len(process_devices(original))),
                                     devices, ports)  # fmt: skip
            d.moves += 1
            replaced = [p.name for p in parts if p.replica == replica]
            new_parts = parts_of_process(view, run.deployment, specs, run.node_ips, origin="moved",
                                         suffix=f".moved{d.moves}", replaces=replaced,
                                         ray_env=ray_env_for(run.address, run.token_file))  # fmt: skip
            run.next_port += len(specs)
            run.parts += new_parts
            for part in new_parts:
                d.plans[part.name] = view
                d.pending[part.name] = time.monotonic() + d.options.health_timeout_s
            d._start_parts(new_parts)
            where = ", ".join(f"{p.host} ({', '.join(p.devices)})" for p in new_parts)
            d.event("moved", f"{item.name}: {', '.join(p.rpartition('.')[2] for p in replaced)} re-planned onto {where} "
                    f"in {replan_s:.2f} s; starting")  # fmt: skip

    def _pending(self, healthy: set[str], reports: Mapping[str, Any]) -> None:
        d = self.d
        for name, deadline in list(d.pending.items()):
            part = d.run.part(name)
            report = reports.get(name)
            failed = report == DIED or (isinstance(report, dict) and never_healthy(report))
            if name in healthy:
                del d.pending[name]
                d.serving.add(name)
                d.write_backends()
                d.event("moved", f"{part.service}: {part.part} serves from {part.host} at {', '.join(part.urls)}")
                if d.run.no_return:
                    self._drop(part.replaces)
            elif failed or time.monotonic() > deadline:
                del d.pending[name]
                self._remove([part])
                d.event("failed", f"{part.service}: stand-in {part.part} on {part.host} did not become healthy; stopped")

    def _drop(self, names: Sequence[str]) -> None:
        """--no-return: the plan parts a stand-in replaced are given up (Ray stops waiting to restart them)."""
        d = self.d
        for name in names:
            part = d.run.part(name)
            handle = d.handles.pop(name, None)
            if handle is not None:
                stop_agents(d.ray, [handle], timeout_s=5)
            part.dropped = True
        d.save()

    def _returns(self, healthy: set[str], alive: Mapping[str, HostReport]) -> None:
        """A stand-in whose plan parts are all healthy again (their host came back) is drained and stopped."""
        d = self.d
        if d.run.no_return:
            return
        for part in [p for p in d.run.parts if p.origin == "moved" and p.name in d.serving]:
            originals = [d.run.part(n) for n in part.replaces]
            if originals and all(o.name in healthy for o in originals):
                d.serving |= {o.name for o in originals}
                d.serving.discard(part.name)
                d.write_backends()
                d.draining[part.name] = time.monotonic() + d.options.drain_s
                d.event("returned", f"{part.service}: back on {', '.join(sorted({o.host for o in originals}))}; "
                        f"stand-in {part.part} on {part.host} drains and stops")  # fmt: skip

    def _drain(self) -> None:
        d = self.d
        due = [n for n, at in d.draining.items() if time.monotonic() >= at]
        for name in due:
            del d.draining[name]
            self._remove([d.run.part(name)])

    def _remove(self, parts: Sequence[Part]) -> None:
        d = self.d
        handles = [d.handles.pop(p.name) for p in parts if p.name in d.handles]
        stop_agents(d.ray, handles, timeout_s=20)
        for p in parts:
            d.inflight.pop(p.name, None)
            d.serving.discard(p.name)
            if p.group is not None and p.group in d.groups:
                remove_placement_group(d.groups.pop(p.group))
        names = {p.name for p in parts}
        d.run.parts = [p for p in d.run.parts if p.name not in names]
        d.write_backends()
        d.save()


