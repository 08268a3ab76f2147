"""What `gpumix up --ray` runs where: a plan's processes as host-agent parts, bound to the hosts' node addresses,
and the state it records in the run dir (`ray.json`). Pure: no Ray import (gpumix/cluster/up.py drives Ray).

- A **part** is one host agent: the processes of one replica of one service on one host. A service whose
  process uses devices on several hosts (a llama.cpp split over RPC with `allow_rpc`) has one part per host —
  llama-server on its main host, a ggml-rpc-server on each other host — and they form a **group**: reserved
  together in one placement group and restarted together.
- Every process listens on its host's node address (`bind_to_node`), never 0.0.0.0; a split's `--rpc` names the
  workers' node addresses, so no ssh forward is needed on a cluster.
- Each part claims its devices' custom resources (`gpumix.io/dev/<id>`, capacity 1 per device) in proportion to
  the memory the plan books for it there (`device_shares`): Ray then refuses to place more on a device than the
  planner allowed, also for services re-planned after a host died.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from gpumix.cluster.agent import DeviceClaim, bind_to_node
from gpumix.cluster.auth import auth_env
from gpumix.cluster.names import agent_actor_name, check_host_name
from gpumix.errors import GpumixError
from gpumix.fsutil import write_text_atomic
from gpumix.launch.commands import process_devices, process_kv, render_processes
from gpumix.launch.spec import LaunchSpec
from gpumix.plan.result import Plan, PlannedService

RAY_RUN_FILE = "ray.json"
BACKENDS_FILE = "backends.json"
SPEC_COPY = "plan-file.yaml"  # the plan file `up --ray` started from, kept for re-planning
SHARE_STEP = 1e-4  # Ray keeps 4 decimal places of a fractional resource
MIN_SHARE = SHARE_STEP
RPC_FLAG = "--rpc"

PartOrigin = Literal["plan", "moved"]
Phase = Literal["starting", "running", "failed", "stopping", "stopped"]


class Part(BaseModel):
    """One host agent of a deployment."""

    model_config = ConfigDict(extra="forbid")

    name: str  # Ray actor name: <deployment>.<part>
    part: str  # within the deployment: the main process's name (chat-0, embed, big-rpc0, chat-1.moved1)
    service: str
    replica: int
    host: str
    devices: list[str]  # plan device ids on `host` it claims
    shares: dict[str, float]  # device id -> share of its one resource unit
    memory_bytes: dict[str, int]  # device id -> bytes the planner booked there (re-planning books them)
    specs: list[LaunchSpec]  # bound to the host's node address
    group: str | None = None  # the split it belongs to (reserved and restarted together)
    origin: PartOrigin = "plan"
    replaces: list[str] = Field(default_factory=list)  # moved: the plan parts (names) it stands in for
    dropped: bool = False  # a plan part given up for good (`--no-return` after its service moved)
    streams: int = 1  # the streams its server takes (-np / --max-num-seqs): the gateway balances by them

    @property
    def urls(self) -> list[str]:
        """The URLs the gateway sends requests to (servers; RPC workers answer no endpoint)."""
        return [spec.url for spec in self.specs if spec.role == "server"]

    def claims(self) -> tuple[DeviceClaim, ...]:
        return tuple(DeviceClaim(device_id, self.shares[device_id]) for device_id in self.devices)


EventKind = Literal["host-dead", "host-back", "moved", "unplaced", "degraded", "returned", "restarted", "failed"]


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid")

    at: float = Field(default_factory=time.time)
    kind: EventKind
    message: str


class RayRun(BaseModel):
    """`<run dir>/ray.json`: a deployment on a Ray cluster, written by the `up --ray` process as it changes."""

    model_config = ConfigDict(extra="forbid")

    deployment: str
    address: str
    cluster_dir: str | None = None
    token_file: str | None = None
    spec_file: str | None = None  # the plan file kept for re-planning (None: re-planning is off)
    front_port: int
    next_port: int  # the next port a moved part gets
    no_return: bool = False
    phase: Phase = "starting"
    error: str | None = None
    pid: int = Field(default_factory=os.getpid)
    started_at: float = Field(default_factory=time.time)
    node_ips: dict[str, str] = Field(default_factory=dict)  # plan host -> node address
    dead_hosts: list[str] = Field(default_factory=list)
    parts: list[Part] = Field(default_factory=list)
    events: list[Event] = Field(default_factory=list)

    def part(self, name: str) -> Part:
        for part in self.parts:
            if part.name == name:
                return part
        raise KeyError(name)

    def groups(self) -> dict[str, list[Part]]:
        out: dict[str, list[Part]] = {}
        for part in self.parts:
            if part.group is not None and not part.dropped:
                out.setdefault(part.group, []).append(part)
        return out


def write_ray_run(run_dir: Path, run: RayRun) -> None:
    write_text_atomic(run_dir / RAY_RUN_FILE, run.model_dump_json(indent=2))


def read_ray_run(run_dir: Path) -> RayRun | None:
    path = run_dir / RAY_RUN_FILE
    if not path.is_file():
        return None
    return RayRun.model_validate_json(path.read_text())


def write_backends(path: Path, table: Mapping[str, list[str]], dead: Iterable[str] = (),
                   weights: Mapping[str, list[float]] | None = None) -> None:  # fmt: skip
    """The gateway's backends file (gpumix gateway --backends-file; gpumix.gateway.config.BackendsFile), replaced
    atomically. `weights`: per service, one per URL, the streams each replica takes (the gateway's `--balance
    shares`); `dead`: URLs on hosts Ray declared dead (the gateway fails requests waiting on them over at once)."""
    body = {"services": {name: list(urls) for name, urls in table.items()},
            "weights": {name: list(w) for name, w in (weights or {}).items()}, "dead": sorted(set(dead))}  # fmt: skip
    write_text_atomic(path, json.dumps(body, indent=2))


# ---- from a plan to parts --------------------------------------------------------------------------------
def deployment_name(text: str) -> str:
    """A deployment name usable in Ray actor names (the run dir's name by default)."""
    name = "".join(c if c.isalnum() or c in "-_" else "-" for c in text).strip("-_")[:40]
    if not name:
        raise GpumixError(f"{text!r} cannot name a deployment", hint="pass --name NAME (letters, digits, '-', '_')")
    return name


def check_plan_hosts(plan: Plan) -> list[str]:
    """The plan's hosts; every device must name one (a Ray node is a plan host)."""
    hostless = [d.id for d in plan.devices if d.host is None]
    if hostless:
        raise GpumixError(f"the plan's devices {', '.join(hostless)} name no host; `up --ray` runs each host's "
                          "services on the Ray node that joined as that host",
                          hint="give each device in the plan file `host: NAME` (the name used with `gpumix cluster join`)")  # fmt: skip
    return [check_host_name(str(h)) for h in plan.hosts()]


def plan_parts(plan: Plan, deployment: str, node_ips: Mapping[str, str], base_port: int,
               ray_env: Mapping[str, str] | None = None) -> list[Part]:  # fmt: skip
    """Every process of the plan as parts on its hosts, ports base_port, base_port+1, ... in plan order."""
    ports = iter(range(base_port, base_port + 65536))
    parts: list[Part] = []
    for service in plan.services:
        for replica, devices in enumerate(process_devices(service)):
            specs = render_processes(plan, service, replica, len(process_devices(service)), devices, ports)
            parts += parts_of_process(plan, deployment, specs, node_ips, ray_env=ray_env)
    return parts


def parts_of_process(plan: Plan, deployment: str, specs: Sequence[LaunchSpec], node_ips: Mapping[str, str],
                     origin: PartOrigin = "plan", suffix: str = "", replaces: Sequence[str] = (),
                     ray_env: Mapping[str, str] | None = None) -> list[Part]:  # fmt: skip
    """The parts of one replica's processes (a server, plus its RPC workers on other hosts): one part per host,
    grouped when there are several."""
    bound = bind_specs(specs, node_ips, ray_env)
    by_host: dict[str, list[LaunchSpec]] = {}
    for spec in bound:
        if spec.host_name is None:
            raise GpumixError(f"process {spec.name} has no host", hint="give the plan's devices `host:`")
        by_host.setdefault(spec.host_name, []).append(spec)
    main = bound[0]
    group = agent_actor_name(deployment, f"{main.name}{suffix}") if len(by_host) > 1 else None  # names its placement group
    out = []
    for host, host_specs in by_host.items():
        part_name = f"{host_specs[0].name}{suffix}"
        devices = list(dict.fromkeys(d for s in host_specs for d in s.devices if plan.device(d).host == host))
        if not devices:
            raise GpumixError(f"process {host_specs[0].name} on host {host} uses no device of that host")
        memory = {d: _planned_bytes(plan.service(main.service), d) for d in devices}
        out.append(Part(
            name=agent_actor_name(deployment, part_name), part=part_name, service=main.service, replica=main.replica,
            host=host, devices=devices, shares={d: device_share(memory[d], plan.device(d).memory_total_bytes) for d in devices},
            memory_bytes=memory, specs=host_specs, group=group, origin=origin, replaces=list(replaces),
            streams=process_kv(plan.service(main.service), main.replica)[0],
        ))  # fmt: skip
    return out


def _planned_bytes(service: PlannedService, device_id: str) -> int:
    for pos, planned in enumerate(service.devices):
        if planned == device_id and pos < len(service.memory_bytes):
            return service.memory_bytes[pos]
    return 0


def device_share(memory_bytes: int, total_bytes: int) -> float:
    """The share of a device's one resource unit that a part claims: its planned memory over the device's total,
    rounded up to Ray's resolution (at least one step, at most the whole device)."""
    if total_bytes <= 0:
        return 1.0
    steps = math.ceil(memory_bytes / total_bytes / SHARE_STEP - 1e-9)
    return min(1.0, max(MIN_SHARE, round(steps * SHARE_STEP, 4)))


def bind_specs(specs: Sequence[LaunchSpec], node_ips: Mapping[str, str],
               ray_env: Mapping[str, str] | None = None) -> list[LaunchSpec]:  # fmt: skip
    """Each spec listening on its host's node address; a llama-server's `--rpc` pointing at its workers' node
    addresses (not the loopback forwards of a plain export); a vLLM process whose stages run on other hosts
    gets the cluster's address and token (`ray_env`) and its own node address (VLLM_HOST_IP)."""
    missing = sorted({str(s.host_name) for s in specs if s.host_name not in node_ips})
    if missing:
        raise GpumixError(f"host {missing[0]} of the plan is not in the cluster",
                          hint=f"on that machine run `gpumix cluster join ADDRESS --host {missing[0]}`")  # fmt: skip
    bound = [bind_to_node(spec, node_ips[str(spec.host_name)]) for spec in specs]
    endpoints = {s.port: f"{s.host}:{s.port}" for s in bound if s.role == "rpc-worker"}
    out = []
    for spec in bound:
        if spec.role == "rpc-worker":
            spec = spec.model_copy(update={"notes": [
                f"RPC worker of {spec.service} on host {spec.host_name}, listening on {spec.host}:{spec.port} (the "
                "cluster address): llama.cpp RPC has no authentication, keep the cluster network private"]})  # fmt: skip
        elif RPC_FLAG in spec.argv:
            spec = _point_rpc(spec, endpoints)
        elif spec.engine == "vllm" and "--distributed-executor-backend" in spec.argv:
            spec = _vllm_multinode(spec, ray_env or {})
        out.append(spec)
    return out


def _point_rpc(spec: LaunchSpec, endpoints: Mapping[int, str]) -> LaunchSpec:
    argv = list(spec.argv)
    i = argv.index(RPC_FLAG) + 1
    targets = [endpoints.get(int(e.rpartition(":")[2]), e) for e in argv[i].split(",")]
    argv[i] = ",".join(targets)
    note = (f"split across hosts over llama.cpp RPC: workers at {', '.join(targets)} (cluster addresses; RPC has no "
            "authentication, keep the cluster network private)")  # fmt: skip
    return spec.model_copy(update={"argv": argv, "notes": [note]})


def _vllm_multinode(spec: LaunchSpec, ray_env: Mapping[str, str]) -> LaunchSpec:
    """vLLM pipeline parallel over hosts: `vllm serve ... --distributed-executor-backend ray` on the first stage's
    host joins the running cluster (RAY_ADDRESS, with the cluster token) and places its other stages itself."""
    env = dict(spec.env) | dict(ray_env) | {"VLLM_HOST_IP": spec.host}
    note = ("vLLM pipeline parallel across hosts: this process joins the Ray cluster (RAY_ADDRESS) and places its "
            "other stages as Ray workers on the GPUs Ray offers there (Ray's GPU resource: start those hosts' nodes "
            "with CUDA_VISIBLE_DEVICES = the planned cards to pin them)")  # fmt: skip
    return spec.model_copy(update={"env": env, "notes": [note]})


def ray_env_for(address: str, token_file: str | None) -> dict[str, str]:
    """What a process that joins the cluster itself (vLLM's Ray executor) needs: the address and the token."""
    return {"RAY_ADDRESS": address} | auth_env(Path(token_file) if token_file else None)


def backend_table(services: Iterable[str], parts: Iterable[Part], serving: set[str]) -> dict[str, list[str]]:
    """The gateway's backends: for every service, the URLs of its parts in `serving` (names), in part order."""
    return {name: [u for u, _ in pairs] for name, pairs in _served(services, parts, serving).items()}


def backend_weights(services: Iterable[str], parts: Iterable[Part], serving: set[str]) -> dict[str, list[float]]:
    """backend_table's weights: each URL's part's streams (a stand-in re-planned for the streams of the replica it
    replaces weighs what that replica did)."""
    return {name: [float(w) for _, w in pairs] for name, pairs in _served(services, parts, serving).items()}


def _served(services: Iterable[str], parts: Iterable[Part], serving: set[str]) -> dict[str, list[tuple[str, int]]]:
    table: dict[str, list[tuple[str, int]]] = {name: [] for name in services}
    for part in parts:
        if part.name in serving and part.service in table:
            table[part.service] += [(url, part.streams) for url in part.urls]
    return table


def as_replica(plan: Plan, service: str, index: int, replica: int) -> Plan:
    """`plan` with process `index` of `service` moved to position `replica` of its per-replica lists (streams, KV,
    shares): a stand-in re-planned as replica 0 of its own plan is rendered, named and sized as the replica
    `replica` it replaces (gpumix.launch.commands.process_kv reads those lists by the replica's number)."""
    svc = plan.service(service)
    update: dict[str, list[object]] = {}
    for field_name in ("replica_concurrency", "replica_kv_cache_tokens", "replica_shares"):
        values = list(getattr(svc, field_name))
        if index < len(values):
            update[field_name] = [values[index]] * (replica + 1)
    moved = svc.model_copy(update=update)
    return plan.model_copy(update={"services": [moved if s.name == service else s for s in plan.services]})
