"""A plan running on a cluster (`gpumix up --ray`): its options, its parts' agents and groups, starting and
stopping them, and the gateway's backends file. The controller (controller.py) keeps it serving."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from gpumix.cluster.agent import AgentGroup, AgentSpec, agent_names, get_agent, reserve_group, start_agent, wait_healthy
from gpumix.cluster.deploy import (
    BACKENDS_FILE,
    Event,
    EventKind,
    Part,
    RayRun,
    backend_table,
    backend_weights,
    plan_parts,
    ray_env_for,
    write_backends,
    write_ray_run,
)
from gpumix.cluster.driver import (
    alive_hosts,
    check_hosts,
    check_same_build,
    llama_builds,
    remove_placement_group,
    stop_agents,
    wait_names_free,
)
from gpumix.cluster.status import host_reports
from gpumix.errors import GpumixError
from gpumix.launch.commands import DEFAULT_BASE_PORT
from gpumix.plan.result import Plan
from gpumix.run.supervisor import SupervisorSettings

Say = Callable[[str], object]


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
    _backends: tuple[dict[str, list[str]], dict[str, list[float]], list[str]] | None = None

    @property
    def backends_path(self) -> Path:
        return self.run_dir / BACKENDS_FILE

    def save(self) -> None:
        write_ray_run(self.run_dir, self.run)

    def event(self, kind: EventKind, message: str) -> None:
        self.run.events.append(Event(kind=kind, message=message))
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
        wait_names_free([p.name for p in group.parts])
        for p in group.parts:
            self.inflight.pop(p.name, None)
        group.restarts += 1
        self._start_group_agents(group)

    # ---- the gateway's table -----------------------------------------------------------------------------
    def write_backends(self) -> None:
        names = [s.name for s in self.plan.services]
        table = backend_table(names, self.run.parts, self.serving)
        weights = backend_weights(names, self.run.parts, self.serving)
        dead = sorted({u for p in self.run.parts if p.host in self.run.dead_hosts for u in p.urls})
        if (table, weights, dead) != self._backends:
            write_backends(self.backends_path, table, dead, weights)
            self._backends = (table, weights, dead)

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
            remove_placement_group(group)
        self.handles.clear()
        self.groups.clear()


def _is_worker(part: AgentSpec | Part) -> bool:
    return all(s.role == "rpc-worker" for s in part.specs)


