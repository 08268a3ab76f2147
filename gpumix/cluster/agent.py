"""The host agent: a detached, named Ray actor that runs gpumix's supervisor for engines on one plan host.

One agent = one part of a deployment (a replica, or one host's share of a split) = the supervisor
(gpumix/run/supervisor.py: pinned processes, health, restarts with backoff, logs) for its LaunchSpecs.

- **Placement:** pinned to its plan host by the node label ``gpumix.io/host`` and to its devices by their
  custom resources (names.device_resource); ``num_gpus=0`` and ``num_cpus=0``, so Ray never sets
  CUDA_VISIBLE_DEVICES: the LaunchSpecs carry gpumix's own pinning. The agent checks the label again on
  start and refuses to run on another host.
- **Lifetime:** the supervisor is a child process on a lifeline pipe (agent_main.py): when the actor or its
  worker process dies, the supervisor stops its engines; when the supervisor dies, the actor exits too, so
  Ray (max_restarts) or the group controller starts the part again. No engine outlives its agent.
- **Addresses:** the engines bind the node's cluster address (``bind="node"``), not 127.0.0.1 and never
  0.0.0.0, so a gateway on another host can reach them; ``describe()`` reports the URLs.
- **Groups:** the parts of one split are reserved together in one placement group (all or nothing) and
  restarted together (AgentGroup).

Ray is imported lazily: this module can be imported (and its pure helpers tested) without the extra.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from gpumix.cluster.agent_main import write_agent_files
from gpumix.cluster.names import AGENT_NAMESPACE, HOST_LABEL, check_host_name, check_node_ip, device_resource
from gpumix.errors import GpumixError
from gpumix.launch.llamacpp import cache_dir
from gpumix.launch.spec import LaunchSpec
from gpumix.plan.result import Plan
from gpumix.run.state import read_state
from gpumix.run.supervisor import SupervisorSettings

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# Flags that name an engine's listen address (llama-server and vLLM --host, ggml-rpc-server -H, TEI --hostname).
BIND_FLAGS = ("--host", "-H", "--hostname")
WILDCARDS = ("0.0.0.0", "::", "[::]", "*")
AGENT_EXIT_CODE = 70  # the actor exits with it when its supervisor died on its own


@dataclass(frozen=True)
class DeviceClaim:
    """One device an agent holds: its plan-wide id ('b/gpu0') and the share of its one unit."""

    device_id: str
    share: float = 1.0  # parts of one plan that share a card split its unit (e.g. 0.5 each)

    @property
    def resource(self) -> str:
        return device_resource(self.device_id)

    def __post_init__(self) -> None:
        if not 0 < self.share <= 1:
            raise GpumixError(f"device {self.device_id}: share {self.share} is not in (0, 1]")


@dataclass(frozen=True)
class AgentSpec:
    """Everything one host agent needs; built by `gpumix up --ray` for each part of each service."""

    name: str  # unique Ray actor name in the gpumix namespace, e.g. names.agent_actor_name("demo", "chat-1")
    host: str  # plan host: the node label it must land on
    devices: tuple[DeviceClaim, ...]  # at least one (a CPU-only part claims its host's cpu0)
    specs: tuple[LaunchSpec, ...]  # the processes it supervises (usually one engine)
    plan: Plan  # the plan the specs came from (the supervisor reads each service's devices from it)
    settings: SupervisorSettings = field(default_factory=SupervisorSettings)
    run_root: str | None = None  # on the node; default ~/.cache/gpumix/run/ray (run dir = run_root/name)
    bind: Literal["node", "as-planned"] = "node"
    max_restarts: int = -1  # Ray restarts a dead agent on its host forever (-1); a group's parts use 0

    def __post_init__(self) -> None:
        check_host_name(self.host)
        if not self.devices:
            raise GpumixError(f"agent {self.name}: claims no device", hint="a CPU-only part claims its host's cpu0")
        if not self.specs:
            raise GpumixError(f"agent {self.name}: has no process to run")
        foreign = [d.device_id for d in self.devices if not d.device_id.startswith(f"{self.host}/")]
        if foreign:
            raise GpumixError(f"agent {self.name} for host {self.host} claims devices of another host: {', '.join(foreign)}")
        # LaunchSpec.host_name (the plan host that must run a process) comes with the foundation's plan ids.
        elsewhere = [s.name for s in self.specs if getattr(s, "host_name", None) not in (None, self.host)]
        if elsewhere:
            raise GpumixError(f"agent {self.name} for host {self.host} was given processes of another host: {', '.join(elsewhere)}")

    @property
    def resources(self) -> dict[str, float]:
        return {d.resource: d.share for d in self.devices}


# ---- pure helpers ----------------------------------------------------------------------------------------
def bind_to_node(spec: LaunchSpec, node_ip: str) -> LaunchSpec:
    """The spec with its engine listening on `node_ip`: spec.host and the argv value of its bind flag."""
    check_node_ip(node_ip)
    argv = list(spec.argv)
    for i, arg in enumerate(argv[:-1]):
        if arg in BIND_FLAGS and argv[i + 1] == spec.host:
            argv[i + 1] = node_ip
    return spec.model_copy(update={"argv": argv, "host": node_ip})


def wildcard_binds(spec: LaunchSpec) -> list[str]:
    """Wildcard listen addresses in a spec (refused: an engine has no authentication of its own)."""
    values = [spec.argv[i + 1] for i, arg in enumerate(spec.argv[:-1]) if arg in BIND_FLAGS]
    return [v for v in [spec.host, *values] if v in WILDCARDS]


def actor_options(spec: AgentSpec, placement_group: Any = None, bundle_index: int | None = None) -> dict[str, Any]:
    """Ray actor options of one agent: detached, named, pinned by label and device resources, no GPUs/CPUs."""
    options: dict[str, Any] = {
        "name": spec.name,
        "namespace": AGENT_NAMESPACE,
        "lifetime": "detached",
        "num_cpus": 0,
        "num_gpus": 0,
        "resources": spec.resources,
        "max_restarts": spec.max_restarts,
        "max_concurrency": 1,
    }
    if placement_group is None:
        options["label_selector"] = {HOST_LABEL: spec.host}
    else:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
            placement_group=placement_group, placement_group_bundle_index=-1 if bundle_index is None else bundle_index
        )
    return options


def _check_node_has(specs: list[LaunchSpec], host: str) -> None:
    """Binaries and model files are paths on the node: say which one this host lacks, before starting."""
    from gpumix.run.preflight import binary_problem

    for spec in specs:
        problem = binary_problem(spec.argv[0])
        missing = [f for f in spec.files if not Path(f).exists()]
        if problem or missing:
            raise GpumixError(f"{spec.name} cannot start on host {host}: {problem or f'{missing[0]} does not exist there'}",
                              hint="install the same gpumix, engines and model files on every host")  # fmt: skip


def _wait_ports_free(specs: list[LaunchSpec], host: str, timeout_s: float) -> None:
    from gpumix.run.preflight import port_is_free

    deadline = time.monotonic() + timeout_s
    while True:
        taken = [s for s in specs if not port_is_free(s.port, s.host)]
        if not taken:
            return
        if time.monotonic() >= deadline:
            raise GpumixError(f"{taken[0].name} cannot start on host {host}: port {taken[0].port} on {taken[0].host} is taken",
                              hint="stop what listens there, or plan another port")  # fmt: skip
        time.sleep(0.5)


def _die_with_parent() -> None:
    """Between fork and exec: the kernel sends SIGTERM to the supervisor when the agent's thread goes."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


# ---- the actor -------------------------------------------------------------------------------------------
class HostAgent:
    """The actor class (wrapped by ray.remote in `agent_class()`); its methods run on the worker's main thread."""

    def __init__(self, spec: AgentSpec) -> None:
        import ray

        self.spec = spec
        context = ray.get_runtime_context()
        self.node_id = context.get_node_id()
        self.node_ip = ray.util.get_node_ip_address()
        labels: dict[str, object] = dict(context.get_node_labels())  # Ray annotates values as lists; they are str
        if labels.get(HOST_LABEL) != spec.host:  # Ray's label selector makes this impossible; refuse anyway
            raise GpumixError(f"agent {spec.name} for host {spec.host} landed on node {self.node_ip} "
                              f"labelled {labels.get(HOST_LABEL)!r}; refusing to start")  # fmt: skip
        self.specs = [self._bound(s) for s in spec.specs]
        _check_node_has(self.specs, spec.host)
        # After a restart the previous engines may hold their ports until their stop timeout runs out.
        _wait_ports_free(self.specs, spec.host, spec.settings.stop_timeout_s + 10)
        self.run_dir = Path(spec.run_root or cache_dir() / "run" / "ray") / spec.name
        self.created_at = time.time()
        self.proc: subprocess.Popen | None = None
        self._stopping = False
        self._start()
        threading.Thread(target=self._watch, name="supervisor-watch", daemon=True).start()

    def _bound(self, spec: LaunchSpec) -> LaunchSpec:
        if self.spec.bind == "node":
            spec = bind_to_node(spec, self.node_ip)
        wild = wildcard_binds(spec)
        if wild:
            raise GpumixError(f"{spec.name} would listen on {wild[0]} (every interface)", hint="bind it to the node's address")
        return spec

    def _start(self) -> None:
        write_agent_files(self.run_dir, self.spec.plan, self.specs, self.spec.settings)
        (self.run_dir / "state.json").unlink(missing_ok=True)
        log = (self.run_dir / "agent.log").open("ab")
        # stdin is the lifeline (never written); the pipe is the reason the supervisor notices this process die.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gpumix.cluster.agent_main", str(self.run_dir)],
            stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_die_with_parent,
        )  # fmt: skip
        log.close()

    def _watch(self) -> None:
        """The supervisor died on its own: end this actor too, so Ray or the group controller restarts the part."""
        while True:
            proc = self.proc
            if proc is not None and proc.poll() is not None and not self._stopping:
                os._exit(AGENT_EXIT_CODE)
            time.sleep(0.5)

    # ---- methods callers use -------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Where it runs, what it holds, and its processes' state (the supervisor's state.json)."""
        state = read_state(self.run_dir) if (self.run_dir / "state.json").is_file() else None
        processes = [p.model_dump(mode="json") for p in state.processes] if state else []
        running = self.proc is not None and self.proc.poll() is None
        return {
            "name": self.spec.name, "host": self.spec.host, "node_id": self.node_id, "node_ip": self.node_ip,
            "pid": os.getpid(), "supervisor_pid": self.proc.pid if running and self.proc else None,
            "run_dir": str(self.run_dir), "devices": [d.device_id for d in self.spec.devices],
            "resources": self.spec.resources, "created_at": self.created_at,
            "urls": {s.name: s.url for s in self.specs}, "processes": processes,
            "healthy": bool(processes) and all(p["state"] == "healthy" for p in processes),
        }  # fmt: skip

    def stop(self, timeout_s: float | None = None) -> dict[str, Any]:
        """Stop the supervisor (it stops its engines: SIGTERM, then SIGKILL after its stop timeout)."""
        self._stopping = True
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout_s or self.spec.settings.stop_timeout_s + 10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if proc is not None and proc.stdin is not None:
            proc.stdin.close()
        return self.describe()

    def restart(self) -> dict[str, Any]:
        """Stop and start every process of this agent (a fresh supervisor, same run dir)."""
        self.stop()
        self._start()
        self._stopping = False
        return self.describe()


def agent_class() -> Any:
    """HostAgent as a Ray actor class."""
    import ray

    return ray.remote(HostAgent)


# ---- creating, finding, stopping agents (from a driver) ------------------------------------------------
def start_agent(spec: AgentSpec, placement_group: Any = None, bundle_index: int | None = None) -> Any:
    """Create the agent actor (returns its handle at once; it runs when Ray has placed it)."""
    return agent_class().options(**actor_options(spec, placement_group, bundle_index)).remote(spec)


def describe(handle: Any, timeout_s: float = 10.0) -> dict[str, Any] | None:
    """The agent's report; None while it is not placed, starting or restarting; raises RayActorError
    (ActorDiedError) once it is dead for good."""
    import ray

    ref = handle.describe.remote()
    ready, _ = ray.wait([ref], timeout=timeout_s)
    if not ready:
        return None
    try:
        return ray.get(ref)
    except ray.exceptions.ActorUnavailableError:  # Ray is restarting it (max_restarts): not dead
        return None


def wait_healthy(handles: list[Any], timeout_s: float, names: list[str] | None = None,
                 poll_s: float = 0.5) -> list[dict[str, Any]]:  # fmt: skip
    """Reports of agents once every process of each is healthy; GpumixError on a failure or the timeout."""
    import ray

    deadline = time.monotonic() + timeout_s
    labels = names or [f"agent {i}" for i in range(len(handles))]
    while True:
        reports = []
        for handle, label in zip(handles, labels, strict=True):
            try:
                reports.append(describe(handle, timeout_s=max(0.1, min(5.0, deadline - time.monotonic()))))
            except ray.exceptions.RayActorError as exc:
                raise GpumixError(f"{label} died: {_first_line(exc)}") from None
        failed = [(r["name"], p) for r in reports if r for p in r["processes"] if _never_healthy(p)]
        if failed:
            name, proc = failed[0]
            raise GpumixError(f"{name}: {proc['name']} did not become healthy: {proc['last_error']}", hint=f"log: {proc['log']}")
        healthy = [r for r in reports if r is not None and r["healthy"]]
        if len(healthy) == len(reports):
            return healthy
        if time.monotonic() >= deadline:
            waiting = [label for label, r in zip(labels, reports, strict=True) if r is None]
            if waiting:
                raise GpumixError(f"{', '.join(waiting)} not placed within {timeout_s:g} s",
                                  hint="is its host in the cluster (`gpumix cluster status`)? are its devices held by another agent?")  # fmt: skip
            raise GpumixError(f"agents not healthy within {timeout_s:g} s")
        time.sleep(poll_s)


def _never_healthy(proc: dict[str, Any]) -> bool:
    """Failed, unhealthy, or exited before it was ever healthy (a crash loop: the supervisor keeps trying)."""
    crashed_before_healthy = proc["last_exit_code"] is not None and proc["healthy_at"] is None
    return proc["state"] in ("failed", "unhealthy") or crashed_before_healthy


def get_agent(name: str) -> Any | None:
    import ray

    try:
        return ray.get_actor(name, namespace=AGENT_NAMESPACE)
    except ValueError:
        return None


def agent_names() -> list[str]:
    """Names of the live (or restarting) named actors in gpumix's namespace."""
    import ray

    return sorted(ray.util.list_named_actors(all_namespaces=False))


def stop_agent(handle: Any, timeout_s: float = 30.0) -> None:
    """Stop its engines cleanly, then end the actor (Ray does not restart an actor ended by ray.kill)."""
    import ray

    with contextlib.suppress(ray.exceptions.RayError):
        ray.get(handle.stop.remote(), timeout=timeout_s)
    with contextlib.suppress(ray.exceptions.RayError, ValueError):
        ray.kill(handle, no_restart=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


# ---- a group of parts: reserved together, restarted together --------------------------------------------
@dataclass
class AgentGroup:
    """The parts of one split (e.g. llama-server on host a + ggml-rpc-server on host b)."""

    name: str
    parts: list[AgentSpec]
    placement_group: Any
    handles: list[Any] = field(default_factory=list)
    restarts: int = 0


def bundles_of(parts: list[AgentSpec]) -> tuple[list[dict[str, float]], list[dict[str, str]]]:
    """One bundle per part (its device resources) and the host label each bundle must land on."""
    return [p.resources for p in parts], [{HOST_LABEL: p.host} for p in parts]


def reserve_group(name: str, parts: list[AgentSpec], timeout_s: float) -> AgentGroup:
    """Reserve every part's devices at once (a placement group): all of them, or nothing and an error."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    if not parts:
        raise GpumixError(f"group {name} has no parts")
    bundles, selectors = bundles_of(parts)
    pg = placement_group(bundles, strategy="PACK", name=f"gpumix.{name}", lifetime="detached",
                         bundle_label_selector=selectors)  # fmt: skip
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:
        remove_placement_group(pg)
        wanted = "; ".join(f"{p.host}: {', '.join(d.device_id for d in p.devices)}" for p in parts)
        raise GpumixError(f"cannot reserve all {len(parts)} parts of {name} together within {timeout_s:g} s ({wanted}); "
                          "nothing was started",
                          hint="every host must be in the cluster with those devices free (`gpumix cluster status`)")  # fmt: skip
    return AgentGroup(name=name, parts=[replace(p, max_restarts=0) for p in parts], placement_group=pg)


def start_group(group: AgentGroup) -> AgentGroup:
    """Create every part's agent in its bundle of the group's placement group."""
    group.handles = [start_agent(part, group.placement_group, i) for i, part in enumerate(group.parts)]
    return group


def dead_parts(group: AgentGroup, timeout_s: float = 10.0) -> list[str]:
    """Names of the group's parts whose agent is dead (its worker, supervisor or node is gone)."""
    import ray

    dead = []
    for part, handle in zip(group.parts, group.handles, strict=True):
        try:
            describe(handle, timeout_s)
        except ray.exceptions.RayActorError:
            dead.append(part.name)
    return dead


def restart_group(group: AgentGroup) -> AgentGroup:
    """Stop every part (their engines too) and start them all again in the same reservation."""
    for handle in group.handles:
        stop_agent(handle, timeout_s=15.0)
    for part in group.parts:  # a name is free again only once the killed actor is gone
        deadline = time.monotonic() + 30
        while get_agent(part.name) is not None and time.monotonic() < deadline:
            time.sleep(0.2)
    group.restarts += 1
    return start_group(group)


def check_group(group: AgentGroup) -> bool:
    """One tick of a group controller: restart the whole group if any part died. True if it restarted."""
    if not dead_parts(group):
        return False
    restart_group(group)
    return True


def remove_group(group: AgentGroup) -> None:
    from ray.util.placement_group import remove_placement_group

    for handle in group.handles:
        stop_agent(handle)
    with contextlib.suppress(Exception):
        remove_placement_group(group.placement_group)
