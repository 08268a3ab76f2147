"""What a cluster has: its hosts (Ray nodes with gpumix's label), their devices, alive or dead, and the host
agents running on them with their processes (the services `gpumix up --ray` starts)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from types import ModuleType
from typing import Any

from gpumix.cluster.agent import agent_names, describe, get_agent
from gpumix.cluster.names import HOST_LABEL, devices_of


@dataclass
class AgentReport:
    name: str
    state: str  # "running" (placed, supervisor up) | "pending" (not placed yet) | "dead"
    host: str | None = None
    node_id: str | None = None
    node_ip: str | None = None
    devices: list[str] = field(default_factory=list)
    healthy: bool = False
    processes: list[dict[str, Any]] = field(default_factory=list)  # the supervisor's ProcessStatus entries
    error: str | None = None


@dataclass
class HostReport:
    name: str  # plan host name; "head" for a head node without a host label
    node_ip: str
    node_id: str
    alive: bool
    is_head: bool
    devices: list[str]  # plan-wide device ids offered (their resources)
    agents: list[str] = field(default_factory=list)  # names of agents placed on this node


@dataclass
class ClusterReport:
    address: str
    hosts: list[HostReport]
    agents: list[AgentReport]

    def host(self, name: str, alive_only: bool = True) -> HostReport:
        for h in self.hosts:
            if h.name == name and (h.alive or not alive_only):
                return h
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        return {"address": self.address, "hosts": [asdict(h) for h in self.hosts], "agents": [asdict(a) for a in self.agents]}


def host_reports(ray: ModuleType) -> list[HostReport]:
    """Every node Ray knows (dead ones too: a host that died and came back appears twice), alive first."""
    reports = []
    for node in ray.nodes():
        labels = node.get("Labels") or {}
        resources = node.get("Resources") or {}
        host = labels.get(HOST_LABEL)
        reports.append(HostReport(
            name=host or "head", node_ip=node["NodeManagerAddress"], node_id=node["NodeID"], alive=bool(node["Alive"]),
            is_head="node:__internal_head__" in resources, devices=devices_of(resources),
        ))  # fmt: skip
    return sorted(reports, key=lambda h: (not h.alive, not h.is_head, h.name))


def agent_report(ray: ModuleType, name: str, timeout_s: float) -> AgentReport:
    handle = get_agent(name)
    if handle is None:
        return AgentReport(name=name, state="dead", error="no longer registered")
    try:
        info = describe(handle, timeout_s)
    except ray.exceptions.RayActorError as exc:
        return AgentReport(name=name, state="dead", error=str(exc).strip().splitlines()[0][:300] if str(exc).strip() else None)
    if info is None:
        return AgentReport(name=name, state="pending", error=f"not placed or not answering within {timeout_s:g} s")
    return AgentReport(name=name, state="running", host=info["host"], node_id=info["node_id"], node_ip=info["node_ip"],
                       devices=info["devices"], healthy=info["healthy"], processes=info["processes"])  # fmt: skip


def cluster_report(ray: ModuleType, address: str, agent_timeout_s: float = 5.0) -> ClusterReport:
    hosts = host_reports(ray)
    agents = [agent_report(ray, name, agent_timeout_s) for name in agent_names()]
    by_node = {h.node_id: h for h in hosts}
    for agent in agents:
        if agent.node_id in by_node:
            by_node[agent.node_id].agents.append(agent.name)
    return ClusterReport(address=address, hosts=hosts, agents=agents)
