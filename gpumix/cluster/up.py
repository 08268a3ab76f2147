"""`gpumix up PLAN --ray ADDRESS|auto`: run a plan's services on the hosts of a Ray cluster, keep serving when a
host dies, and bring services back when it returns.

One process on the head machine (the gateway machine) does it all; `--detach` runs it in the background:

1. connects to the cluster as a Ray driver, checks that every plan host is there with the plan's devices;
2. starts each part (gpumix/cluster/deploy.py) as a detached, named host agent pinned to its host and devices;
   the parts of a split across hosts are reserved together (a placement group), RPC workers first;
3. waits until every engine is healthy, writes the gateway's backends file and runs the gateway here under the
   local supervisor (requests go from the gateway straight to the engines: Ray is not in the request path);
4. runs the **controller** (a thread of this process): Ray's node table (read every 0.25 s) says which hosts are dead;
   their parts leave the backends file at once, the lost services are re-planned on the surviving hosts' free
   capacity (gpumix.plan.replan) and started, and what could not be placed is reported (ray.json events, log);
   a split whose part died is restarted as a whole; when a dead host comes back, its services return and their
   stand-ins are drained and stopped (unless `--no-return`).

Why a thread of the `up` process and not a detached controller actor: the controller's one output is the
gateway's backends file, and the gateway is a child of this process on this machine; one process owns both,
so they share a lifetime and a log, and `gpumix down` (SIGTERM to it) stops the controller before anything it
would react to. The agents are detached actors, so a crash of this process leaves the engines serving; `down`
then stops them through Ray by their recorded names.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from gpumix.cluster.agent import (
    AgentGroup,
    AgentSpec,
    agent_names,
    get_agent,
    reserve_group,
    start_agent,
    wait_healthy,
)
from gpumix.cluster.deploy import (
    BACKENDS_FILE,
    SPEC_COPY,
    Event,
    Part,
    RayRun,
    backend_table,
    check_plan_hosts,
    deployment_name,
    parts_of_process,
    plan_parts,
    ray_env_for,
    read_ray_run,
    write_backends,
    write_ray_run,
)
from gpumix.cluster.names import HOST_LABEL
from gpumix.cluster.status import HostReport, host_reports
from gpumix.errors import GpumixError
from gpumix.estimate.calibration import Calibration
from gpumix.hardware.spec import Device
from gpumix.launch.commands import DEFAULT_BASE_PORT, process_devices, render_processes
from gpumix.plan.result import Plan
from gpumix.plan.spec import PlanSpec
from gpumix.run.state import PLAN_FILE, SUPERVISOR_LOG, read_state
from gpumix.run.supervisor import Supervisor, SupervisorSettings, gateway_argv
from gpumix.run.up import refuse_if_running, supervisor_alive

Say = Callable[[str], object]
_DIED = "died"  # describe_many: the agent is dead for good


@dataclass(frozen=True)
class RayUpOptions:
    run_dir: Path
    ray: str = "auto"  # "auto" (the cluster started from --cluster-dir) or the head's IP:PORT
    front_port: int = 8080
    base_port: int = DEFAULT_BASE_PORT  # engines listen on base_port, base_port+1, ... on their hosts
    health_timeout_s: float = 300.0
    no_return: bool = False  # services moved off a dead host stay moved when it returns
    name: str | None = None  # deployment name (Ray actor names); default: the run dir's name
    cluster_dir: Path | None = None
    token_file: Path | None = None
    spec_file: Path | None = None  # the plan file, for re-planning (None: a dead host's services are not moved)
    agent_dir: str | None = None  # where agents keep run dirs and logs on each node
    tick_s: float = 1.0  # controller period: agents' reports, re-planning, returns
    host_poll_s: float = 0.25  # how often Ray's node table is read (a dead host leaves the gateway at once)
    drain_s: float = 3.0  # a stand-in leaves the backends file this long before it is stopped


# ---- connecting --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    address: str
    token_file: str | None
    cluster_dir: str | None

    def connect(self) -> contextlib.AbstractContextManager[ModuleType]:
        from gpumix.cluster.client import connect_state, connected
        from gpumix.cluster.nodes import read_cluster

        if self.cluster_dir is not None:
            state = read_cluster(Path(self.cluster_dir))
            if state is not None and state.address == self.address:
                return connect_state(state)
        return connected(self.address, Path(self.token_file) if self.token_file else None)


def resolve_target(ray: str, cluster_dir: Path | None, token_file: Path | None) -> Target:
    """`auto`: the cluster this machine started (cluster.json in the cluster dir); else IP:PORT with the token."""
    from gpumix.cluster.auth import check_token_file, default_token_file
    from gpumix.cluster.nodes import default_cluster_dir, read_cluster
    from gpumix.cluster.raycli import require_ray

    require_ray()
    directory = (cluster_dir or default_cluster_dir()).resolve()
    if ray == "auto":
        state = read_cluster(directory)
        if state is None:
            raise GpumixError(f"--ray auto: no cluster was started from {directory}",
                              hint="start one (`gpumix cluster head` / `gpumix cluster local`), pass --cluster-dir, "
                              "or pass the head's address: --ray IP:PORT")  # fmt: skip
        return Target(state.address, state.token_file, str(directory))
    ip, _, port = ray.rpartition(":")
    if not ip or not port.isdigit():
        raise GpumixError(f"--ray {ray!r} is not `auto` or IP:PORT", hint="e.g. --ray 10.0.0.1:6379")
    token = check_token_file((token_file or default_token_file()).resolve())
    return Target(ray, str(token), None)


# ---- Ray helpers -------------------------------------------------------------------------------------------
def alive_hosts(reports: Sequence[HostReport]) -> dict[str, HostReport]:
    """Plan hosts with an alive node (the head without a host label is not a plan host)."""
    return {h.name: h for h in reports if h.alive and not (h.is_head and h.name == "head")}


def check_hosts(plan: Plan, alive: Mapping[str, HostReport], address: str) -> dict[str, str]:
    """Node address of every plan host; a GpumixError naming the first host missing or lacking a device."""
    node_ips = {}
    for host in check_plan_hosts(plan):
        report = alive.get(host)
        if report is None:
            raise GpumixError(f"host {host} of the plan is not in the cluster at {address}",
                              hint=f"on that machine: `gpumix cluster join {address} --host {host}`")  # fmt: skip
        missing = [d.id for d in plan.devices if d.host == host and d.id not in report.devices]
        if missing:
            raise GpumixError(f"host {host} ({report.node_ip}) does not offer {', '.join(missing)} (it offers "
                              f"{', '.join(report.devices) or 'nothing'})",
                              hint="re-join it with its devices, or plan for what it has")  # fmt: skip
        node_ips[host] = report.node_ip
    return node_ips


def _llama_build_here() -> str | None:
    """Runs as a Ray task on a host: the llama.cpp build its agents would start (version line), or None."""
    from gpumix.launch.llamacpp import find_llama_cpp

    install = find_llama_cpp()
    return install.version if install else None


def llama_builds(ray: ModuleType, hosts: Sequence[str], timeout_s: float = 180.0) -> dict[str, str | None]:
    """The llama.cpp build on each host, asked on the host itself (a zero-CPU Ray task pinned by label)."""
    task = ray.remote(num_cpus=0)(_llama_build_here)
    refs = {h: task.options(label_selector={HOST_LABEL: h}).remote() for h in hosts}
    return {h: ray.get(ref, timeout=timeout_s) for h, ref in refs.items()}


def check_same_build(split: str, builds: Mapping[str, str | None]) -> None:
    """llama.cpp's RPC protocol changes between builds: every host of a split must run the same one."""
    missing = sorted(h for h, v in builds.items() if v is None)
    if missing:
        raise GpumixError(f"{split}: llama.cpp is not installed on host {missing[0]}",
                          hint="run `gpumix engines install llama.cpp` there (the same version as here)")  # fmt: skip
    versions = sorted(set(builds.values()), key=str)
    if len(versions) > 1:
        found = "; ".join(f"{h}: {v}" for h, v in sorted(builds.items()))
        raise GpumixError(f"{split}: the hosts of this RPC split run different llama.cpp builds ({found})",
                          hint="install the same llama.cpp build on every host of the split")  # fmt: skip


def describe_many(ray: ModuleType, handles: Mapping[str, Any], timeout_s: float,
                  inflight: dict[str, Any] | None = None) -> dict[str, dict[str, Any] | str | None]:  # fmt: skip
    """Every agent's report at once: a dict, None (not answering yet: placing, starting, restarting) or _DIED.
    `inflight` keeps a call that did not answer, so a restarting agent is not sent a new call every tick."""
    inflight = {} if inflight is None else inflight
    for name, handle in handles.items():
        if name not in inflight:
            inflight[name] = handle.describe.remote()
    refs = [inflight[n] for n in handles]
    ready = set(ray.wait(refs, num_returns=len(refs), timeout=timeout_s)[0]) if refs else set()
    out: dict[str, dict[str, Any] | str | None] = {}
    for name in handles:
        ref = inflight[name]
        if ref not in ready:
            out[name] = None
            continue
        del inflight[name]
        try:
            out[name] = ray.get(ref)
        except ray.exceptions.ActorUnavailableError:
            out[name] = None
        except ray.exceptions.RayActorError:
            out[name] = _DIED
    return out


def stop_agents(ray: ModuleType, handles: Sequence[Any], timeout_s: float = 30.0) -> None:
    """Stop several agents at once (each stops its engines), then end the actors."""
    refs = []
    for handle in handles:
        with contextlib.suppress(ray.exceptions.RayError):
            refs.append(handle.stop.remote())
    if refs:
        with contextlib.suppress(ray.exceptions.RayError):
            ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    for handle in handles:
        with contextlib.suppress(ray.exceptions.RayError, ValueError):
            ray.kill(handle, no_restart=True)


def _wait_names_free(names: Sequence[str], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while any(get_agent(n) is not None for n in names) and time.monotonic() < deadline:
        time.sleep(0.2)


def _remove_placement_group(group: AgentGroup | None) -> None:
    if group is None:
        return
    from ray.util.placement_group import remove_placement_group

    with contextlib.suppress(Exception):
        remove_placement_group(group.placement_group)


# ---- the deployment ----------------------------------------------------------------------------------------
@dataclass
class Deployment:
    """A plan running on a cluster: its parts' handles and groups, and the controller's state."""

    ray: ModuleType
    run: RayRun
    plan: Plan
    options: RayUpOptions
    run_dir: Path
    say: Say
    handles: dict[str, Any] = field(default_factory=dict)
    groups: dict[str, AgentGroup] = field(default_factory=dict)
    plans: dict[str, Plan] = field(default_factory=dict)  # part name -> the plan its specs came from
    serving: set[str] = field(default_factory=set)  # parts in the backends file
    pending: dict[str, float] = field(default_factory=dict)  # moved parts starting -> deadline (monotonic)
    draining: dict[str, float] = field(default_factory=dict)  # parts leaving -> when to stop them
    handled: set[str] = field(default_factory=set)  # lost parts already re-planned (or found unplaceable)
    down_groups: set[str] = field(default_factory=set)  # groups stopped because a host of theirs died
    inflight: dict[str, Any] = field(default_factory=dict)
    moves: int = 0
    _backends: tuple[dict[str, list[str]], list[str]] | None = None

    @property
    def backends_path(self) -> Path:
        return self.run_dir / BACKENDS_FILE

    def save(self) -> None:
        write_ray_run(self.run_dir, self.run)

    def event(self, kind: str, message: str) -> None:
        self.run.events.append(Event(kind=kind, message=message))  # type: ignore[arg-type]
        self.run.events = self.run.events[-200:]
        self.say(f"{time.strftime('%H:%M:%S')} {kind}: {message}")
        self.save()

    def agent_spec(self, part: Part) -> AgentSpec:
        settings = SupervisorSettings(stagger_gpu_s=0, stagger_cpu_s=0, health_timeout_s=self.options.health_timeout_s)
        return AgentSpec(name=part.name, host=part.host, devices=part.claims(), specs=tuple(part.specs),
                         plan=self.plans.get(part.name, self.plan), settings=settings, run_root=self.options.agent_dir,
                         bind="as-planned")  # fmt: skip

    # ---- start -------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Every part healthy, or nothing left running and a GpumixError."""
        ray, run = self.ray, self.run
        alive = alive_hosts(host_reports(ray))
        run.node_ips = check_hosts(self.plan, alive, run.address)
        taken = [n for n in agent_names() if n.startswith(f"{run.deployment}.")]
        if taken:
            raise GpumixError(f"deployment {run.deployment} already runs on the cluster ({', '.join(taken[:3])})",
                              hint="`gpumix down` that run first, or pass --name")  # fmt: skip
        parts = plan_parts(self.plan, run.deployment, run.node_ips, self.options.base_port,
                           ray_env_for(run.address, run.token_file))  # fmt: skip
        run.parts = parts
        run.next_port = self.options.base_port + sum(len(p.specs) for p in parts)
        self.save()
        self._check_split_builds(parts)
        self.say(f"starting {len(parts)} host agent(s) on {', '.join(sorted(run.node_ips))}: "
                 + ", ".join(f"{p.part}@{p.host}" for p in parts))  # fmt: skip
        try:
            self._start_parts(parts)
            names = [p.name for p in parts]
            wait_healthy([self.handles[n] for n in names], self.options.health_timeout_s, names=names)
        except BaseException:
            self.stop_everything()
            raise
        self.serving = {p.name for p in parts}
        self.write_backends()

    def _check_split_builds(self, parts: Sequence[Part]) -> None:
        splits: dict[str, set[str]] = {}
        for part in parts:
            if part.group is not None and any(s.engine == "llama.cpp" for s in part.specs):
                splits.setdefault(part.group, set()).add(part.host)
        for split, hosts in splits.items():
            check_same_build(split, llama_builds(self.ray, sorted(hosts)))

    def _start_parts(self, parts: Sequence[Part]) -> None:
        singles = [p for p in parts if p.group is None]
        for part in singles:
            self.handles[part.name] = start_agent(self.agent_spec(part))
        grouped: dict[str, list[Part]] = {}
        for part in parts:
            if part.group is not None:
                grouped.setdefault(part.group, []).append(part)
        for name, members in grouped.items():
            self._start_group(name, members)

    def _start_group(self, name: str, members: Sequence[Part]) -> None:
        """Reserve every member's devices at once, start the RPC workers, then (once they accept) the server."""
        group = reserve_group(name, [self.agent_spec(p) for p in members], timeout_s=min(120.0, self.options.health_timeout_s))
        self.groups[name] = group
        self._start_group_agents(group)

    def _start_group_agents(self, group: AgentGroup) -> None:
        order = sorted(range(len(group.parts)), key=lambda i: not _is_worker(group.parts[i]))
        handles: list[Any] = [None] * len(group.parts)
        workers = [i for i in order if _is_worker(group.parts[i])]
        for i in workers:
            handles[i] = self.handles[group.parts[i].name] = start_agent(group.parts[i], group.placement_group, i)
        if workers:
            wait_healthy([handles[i] for i in workers], self.options.health_timeout_s,
                         names=[group.parts[i].name for i in workers])  # fmt: skip
        for i in order:
            if handles[i] is None:
                handles[i] = self.handles[group.parts[i].name] = start_agent(group.parts[i], group.placement_group, i)
        group.handles = handles

    def restart_group(self, name: str) -> None:
        """Stop every member (their engines too) and start them all again in the same reservation."""
        group = self.groups[name]
        stop_agents(self.ray, group.handles, timeout_s=20)
        _wait_names_free([p.name for p in group.parts])
        for p in group.parts:
            self.inflight.pop(p.name, None)
        group.restarts += 1
        self._start_group_agents(group)

    # ---- the gateway's table -----------------------------------------------------------------------------
    def write_backends(self) -> None:
        table = backend_table([s.name for s in self.plan.services], self.run.parts, self.serving)
        dead = sorted({u for p in self.run.parts if p.host in self.run.dead_hosts for u in p.urls})
        if (table, dead) != self._backends:
            write_backends(self.backends_path, table, dead)
            self._backends = (table, dead)

    # ---- stop ----------------------------------------------------------------------------------------------
    def stop_everything(self) -> None:
        """Every agent of the deployment (and its engines) stopped, every reservation removed."""
        handles = list(self.handles.values())
        for part in self.run.parts:  # parts whose handle this process never had (e.g. after a failed start)
            if part.name not in self.handles:
                found = get_agent(part.name)
                if found is not None:
                    handles.append(found)
        stop_agents(self.ray, handles)
        for group in self.groups.values():
            _remove_placement_group(group)
        self.handles.clear()
        self.groups.clear()


def _is_worker(part: AgentSpec | Part) -> bool:
    return all(s.role == "rpc-worker" for s in part.specs)


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
        from gpumix.estimate.calibration import load_calibration
        from gpumix.plan.fleet import build_devices
        from gpumix.plan.spec import load_plan_with_lines

        try:
            spec, lines = load_plan_with_lines(path)
            self.devices, _ = build_devices(spec, str(path), lines)
            self.calibration = load_calibration(None)
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
                _remove_placement_group(group)
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
            elif any(reports.get(p.name) == _DIED for p in members):
                died = [p.part for p in members if reports.get(p.name) == _DIED]
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
            items.append((LostService(service, len(replicas), avoid), replicas, parts))
        if not items:
            return
        devices = remaining_devices(self.devices, dead, booked)
        started = time.monotonic()
        assert self.spec is not None, "replan runs only with a plan file"
        new = replan_services(self.spec, [i[0] for i in items], devices, calibration=self.calibration,
                              source=str(self.d.options.spec_file))  # fmt: skip
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
            specs = render_processes(new, service, replica, max(1, len(process_devices(original))), devices, ports)
            d.moves += 1
            replaced = [p.name for p in parts if p.replica == replica]
            new_parts = parts_of_process(new, run.deployment, specs, run.node_ips, origin="moved",
                                         suffix=f".moved{d.moves}", replaces=replaced,
                                         ray_env=ray_env_for(run.address, run.token_file))  # fmt: skip
            run.next_port += len(specs)
            run.parts += new_parts
            for part in new_parts:
                d.plans[part.name] = new
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
            failed = report == _DIED or (isinstance(report, dict) and _never_healthy(report))
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
                _remove_placement_group(d.groups.pop(p.group))
        names = {p.name for p in parts}
        d.run.parts = [p for p in d.run.parts if p.name not in names]
        d.write_backends()
        d.save()


def _never_healthy(report: Mapping[str, Any]) -> bool:
    procs = report.get("processes") or []
    return any(p["state"] in ("failed", "unhealthy") or (p["last_exit_code"] is not None and p["healthy_at"] is None)
               for p in procs)  # fmt: skip


# ---- running it --------------------------------------------------------------------------------------------
def prepare_run_dir(plan: Plan, options: RayUpOptions) -> Path | None:
    """The run dir with plan.json and (for re-planning) a copy of the plan file; returns the copy's path."""
    run_dir = options.run_dir
    refuse_if_running(run_dir)
    from gpumix.netutil import port_is_free

    if not port_is_free(options.front_port):
        raise GpumixError(f"the gateway port {options.front_port} on 127.0.0.1 is taken", hint="pass another --port")
    previous = read_ray_run(run_dir)
    if previous is not None and previous.phase in ("starting", "running") and _pid_alive(previous.pid):
        raise GpumixError(f"gpumix up --ray is already running from {run_dir} (pid {previous.pid})",
                          hint="`gpumix down` first, or pass another --run-dir")  # fmt: skip
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / PLAN_FILE).write_text(plan.model_dump_json(indent=2))
    spec = options.spec_file
    if spec is None or not spec.is_file():
        return None
    copy = run_dir / SPEC_COPY
    if spec.resolve() != copy.resolve():
        shutil.copyfile(spec, copy)
    return copy


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_ray(plan: Plan, options: RayUpOptions, say: Say = print) -> int:
    """Start the deployment, serve it through the gateway here and keep it serving until SIGINT/SIGTERM."""
    check_plan_hosts(plan)
    target = resolve_target(options.ray, options.cluster_dir, options.token_file)
    spec_copy = prepare_run_dir(plan, options)
    run_dir = options.run_dir
    run = RayRun(deployment=deployment_name(options.name or run_dir.name), address=target.address,
                 cluster_dir=target.cluster_dir, token_file=target.token_file,
                 spec_file=str(spec_copy) if spec_copy else None, front_port=options.front_port,
                 next_port=options.base_port, no_return=options.no_return)  # fmt: skip
    write_ray_run(run_dir, run)
    (run_dir / "state.json").unlink(missing_ok=True)
    if spec_copy is None:
        say("note: no plan file to re-plan from: services of a dead host will not be moved")
    try:
        with target.connect() as ray:
            deployment = Deployment(ray=ray, run=run, plan=plan, options=options, run_dir=run_dir, say=say)
            return _serve(deployment, spec_copy)
    except BaseException as exc:
        run.phase = "failed" if run.phase == "starting" else "stopped"
        if run.phase == "failed":
            run.error = exc.message if isinstance(exc, GpumixError) else f"{type(exc).__name__}: {exc}"
        write_ray_run(run_dir, run)
        raise


def _serve(d: Deployment, spec_copy: Path | None) -> int:
    started = time.monotonic()
    d.start()
    d.say(f"every part healthy {time.monotonic() - started:.1f} s after the start")
    gateway = gateway_argv(d.run_dir / PLAN_FILE, d.options.front_port, []) + ["--backends-file", str(d.backends_path)]
    supervisor = Supervisor(d.plan, [], d.run_dir, d.run_dir / PLAN_FILE, d.options.front_port,
                            SupervisorSettings(stagger_gpu_s=0), gateway)  # fmt: skip
    supervisor.install_signal_handlers()
    d.run.phase = "running"
    d.save()
    for part in d.run.parts:
        d.say(f"{part.part}: {part.host} {', '.join(part.devices)} {', '.join(part.urls) or '(rpc worker)'}")
    d.say(f"gateway: http://127.0.0.1:{d.options.front_port}; run dir {d.run_dir}")
    stop = threading.Event()
    controller = Controller(d, spec_copy)
    thread = threading.Thread(target=controller.run, args=(stop,), name="gpumix-controller", daemon=True)
    thread.start()
    try:
        supervisor.run()
    finally:
        stop.set()
        thread.join(timeout=60)
        d.run.phase = "stopping"
        d.save()
        d.say("stopping every host agent")
        d.stop_everything()
        d.run.phase = "stopped"
        d.save()
    return 0


# ---- detached, status, down --------------------------------------------------------------------------------
def start_ray_detached(plan_file: Path, plan: Plan, options: RayUpOptions, wait_s: float | None = None) -> RayRun:
    """Run `run_ray` in a background session of its own; return once every part and the gateway are healthy."""
    check_plan_hosts(plan)
    target = resolve_target(options.ray, options.cluster_dir, options.token_file)  # fail here, in the terminal
    spec_copy = prepare_run_dir(plan, options)
    run_dir = options.run_dir
    for stale in ("ray.json", "state.json"):
        (run_dir / stale).unlink(missing_ok=True)
    argv = [sys.executable, "-m", "gpumix", "up", str(run_dir / PLAN_FILE), "--ray", target.address,
            "--run-dir", str(run_dir), "--port", str(options.front_port), "--base-port", str(options.base_port),
            "--health-timeout-s", str(options.health_timeout_s),
            "--name", deployment_name(options.name or run_dir.name)]  # fmt: skip
    if target.cluster_dir:
        argv += ["--cluster-dir", target.cluster_dir]
    if target.token_file:
        argv += ["--token-file", target.token_file]
    if spec_copy:
        argv += ["--spec-file", str(spec_copy)]
    if options.no_return:
        argv += ["--no-return"]
    if options.agent_dir:
        argv += ["--agent-dir", options.agent_dir]
    with (run_dir / SUPERVISOR_LOG).open("ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    return _wait_running(proc, run_dir, wait_s or options.health_timeout_s + 120)


def _wait_running(proc: subprocess.Popen, run_dir: Path, wait_s: float) -> RayRun:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        time.sleep(0.5)
        run = read_ray_run(run_dir)
        if run is not None and run.phase == "failed":
            proc.wait(timeout=120)
            raise GpumixError(run.error or "up --ray failed; nothing was left running",
                              hint=f"log: {run_dir / SUPERVISOR_LOG}")  # fmt: skip
        if proc.poll() is not None:
            raise GpumixError(f"the `up --ray` process exited (code {proc.returncode}) before the services were healthy",
                              hint=_tail(run_dir / SUPERVISOR_LOG))  # fmt: skip
        state = read_state(run_dir)
        gateway_ok = state is not None and all(p.state == "healthy" for p in state.processes)
        if run is not None and run.phase == "running" and gateway_ok:
            return run
    stop_ray(run_dir)
    raise GpumixError(f"the deployment was not serving within {wait_s:g} s; everything was stopped",
                      hint=f"log: {run_dir / SUPERVISOR_LOG}")  # fmt: skip


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def stop_ray(run_dir: Path, timeout_s: float = 180.0, say: Say = print) -> RayRun | None:
    """`gpumix down` of an `up --ray` run: SIGTERM to the up process (it stops the controller, the gateway and
    every agent); if it is gone or does not finish, the agents are stopped through Ray by their recorded names."""
    run = read_ray_run(run_dir)
    if run is None:
        return None
    state = read_state(run_dir)
    alive = (state is not None and supervisor_alive(state)) or (run.phase in ("starting", "running", "stopping") and _pid_alive(run.pid))
    if alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(run.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _pid_alive(run.pid) and time.monotonic() < deadline:
            time.sleep(0.3)
        if _pid_alive(run.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(run.pid, signal.SIGKILL)
    if state is not None:
        from gpumix.run.up import stop

        stop(run_dir, timeout_s=10)  # the gateway, should the up process have died hard
    run = read_ray_run(run_dir) or run
    if run.phase != "stopped":
        _stop_through_ray(run, say)
    return read_ray_run(run_dir) or run


def _stop_through_ray(run: RayRun, say: Say) -> None:
    """The up process died without stopping its agents: stop every agent named after the deployment."""
    target = Target(run.address, run.token_file, run.cluster_dir)
    try:
        with target.connect() as ray:
            names = [n for n in agent_names() if n.startswith(f"{run.deployment}.")]
            handles = [h for h in (get_agent(n) for n in names) if h is not None]
            stop_agents(ray, handles)
            from ray.util import get_placement_group

            for group in {p.group for p in run.parts if p.group}:
                with contextlib.suppress(Exception):
                    ray.util.remove_placement_group(get_placement_group(f"gpumix.{group}"))
            say(f"stopped {len(handles)} host agent(s) of {run.deployment} through Ray")
    except GpumixError as exc:
        say(f"could not reach the cluster to stop the agents of {run.deployment}: {exc.message}")


@dataclass
class PartStatus:
    name: str
    service: str
    host: str
    origin: str
    urls: list[str]
    state: str  # "serving" | "healthy" | "starting" | "dead" | "dropped" | "unknown"
    processes: list[dict[str, Any]] = field(default_factory=list)


def ray_status(run_dir: Path, live: bool = True) -> dict[str, Any] | None:
    """The deployment as recorded, with each agent's state asked from Ray (when the cluster answers)."""
    run = read_ray_run(run_dir)
    if run is None:
        return None
    state = read_state(run_dir)
    reports: dict[str, Any] = {}
    error = None
    if live and run.phase in ("running", "starting"):
        try:
            with Target(run.address, run.token_file, run.cluster_dir).connect() as ray:
                handles = {p.name: h for p in run.parts if (h := get_agent(p.name)) is not None}
                reports = describe_many(ray, handles, timeout_s=5)
        except GpumixError as exc:
            error = exc.message
    parts = []
    backends = _read_backends(run_dir)
    for part in run.parts:
        report = reports.get(part.name)
        if part.dropped:
            state_name = "dropped"
        elif report == _DIED:
            state_name = "dead"
        elif isinstance(report, dict):
            serving = any(u in backends for u in part.urls) if part.urls else True  # an RPC worker serves its split
            state_name = "serving" if report["healthy"] and serving else ("healthy" if report["healthy"] else "starting")
        else:
            state_name = "dead" if part.host in run.dead_hosts else "unknown"
        procs = report["processes"] if isinstance(report, dict) else []
        parts.append(PartStatus(part.part, part.service, part.host, part.origin, part.urls, state_name, procs))
    gateway = state.processes[0].model_dump(mode="json") if state is not None and state.processes else None
    return {
        "deployment": run.deployment, "address": run.address, "phase": run.phase, "error": run.error,
        "pid": run.pid, "running": _pid_alive(run.pid) and run.phase in ("starting", "running"),
        "front_port": run.front_port, "gateway": gateway, "dead_hosts": run.dead_hosts, "node_ips": run.node_ips,
        "parts": [p.__dict__ for p in parts], "events": [e.model_dump(mode="json") for e in run.events[-20:]],
        "cluster_error": error,
    }  # fmt: skip


def _read_backends(run_dir: Path) -> set[str]:
    from gpumix.gateway.config import read_backends_file

    try:
        return {u for urls in read_backends_file(run_dir / BACKENDS_FILE).values() for u in urls}
    except GpumixError:
        return set()

