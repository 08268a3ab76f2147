"""Driving a deployment's host agents from the `up --ray` process (a Ray driver): reaching the cluster, the hosts
it has, asking many agents at once, stopping them, and the llama.cpp build check of an RPC split."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from gpumix.cluster.agent import AgentGroup, get_agent
from gpumix.cluster.deploy import check_plan_hosts
from gpumix.cluster.names import HOST_LABEL
from gpumix.cluster.status import HostReport
from gpumix.errors import GpumixError
from gpumix.plan.result import Plan

DIED = "died"  # describe_many: the agent is dead for good


# ---- connecting ------------------------------------------------------------------------------------------------
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
    """Every agent's report at once: a dict, None (not answering yet: placing, starting, restarting) or DIED.
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
            out[name] = DIED
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


def wait_names_free(names: Sequence[str], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while any(get_agent(n) is not None for n in names) and time.monotonic() < deadline:
        time.sleep(0.2)


def remove_placement_group(group: AgentGroup | None) -> None:
    if group is None:
        return
    from ray.util.placement_group import remove_placement_group

    with contextlib.suppress(Exception):
        remove_placement_group(group.placement_group)


def never_healthy(report: Mapping[str, Any]) -> bool:
    procs = report.get("processes") or []
    return any(p["state"] in ("failed", "unhealthy") or (p["last_exit_code"] is not None and p["healthy_at"] is None)
               for p in procs)  # fmt: skip


