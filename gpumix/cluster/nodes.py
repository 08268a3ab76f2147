"""Starting and stopping Ray nodes with `ray start` (never a protocol of our own), and what was started.

`head`, `join` and `local` each run `ray start` (non-blocking: Ray's own processes stay, the command
returns once the node is up) as the leader of a new session, then record the node in
``<cluster dir>/cluster.json``: its address, session, pids and temp dir, so `down` can stop exactly those.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from gpumix.cluster import procs
from gpumix.cluster.auth import check_token_file, ensure_token, with_auth
from gpumix.cluster.names import CPU_DEVICE, HOST_LABEL, check_host_name, check_ray_node_ip, device_id, device_resource
from gpumix.cluster.raycli import ray_executable
from gpumix.errors import GpumixError
from gpumix.fsutil import write_text_atomic
from gpumix.launch.llamacpp import cache_dir

ENV_CLUSTER_DIR = "GPUMIX_CLUSTER_DIR"
STATE_FILE = "cluster.json"
DEFAULT_HEAD_PORT = 6379  # Ray's default GCS port
START_TIMEOUT_S = 180.0  # one `ray start`; on a loaded 2-core machine a node takes 10-15 s
STOP_GRACE_S = 15.0  # SIGTERM -> SIGKILL; engines get the supervisor's own 10 s stop timeout inside it
LOCAL_FIRST_IP = 2  # `cluster local` hosts: 127.0.0.2, 127.0.0.3, ...
# The test head is not on 127.0.0.1: `ray start` swaps 127.0.0.1/localhost for the machine's routable address
# (services.resolve_ip_for_localhost), which would put a test cluster on the LAN.
LOCAL_HEAD_IP = "127.0.0.254"
LOCAL_MAX_HOSTS = 250  # 127.0.0.2 .. 127.0.0.251
LOCAL_STOP_GRACE_S = 5.0  # a test cluster holds nothing worth draining
LOCAL_OBJECT_STORE_BYTES = 80 * 2**20  # 80 MiB: gpumix passes no data through Ray; Ray's floor is 75 MiB

Say = Callable[[str], None]


class RayNode(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str  # the plan host name, or "head" for a head that is not a plan host
    role: Literal["head", "host"]
    host: str | None  # value of the gpumix.io/host label (None: the head carries no host label)
    node_ip: str
    session: int  # session id = pid of the `ray start` that started it
    started_at: float
    pids: list[int]  # the node's Ray processes right after start (workers come later, same session)
    temp_dir: str
    log: str
    resources: dict[str, float] = Field(default_factory=dict)


class ClusterState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["local", "head", "join"]
    address: str  # the head's GCS address, ip:port
    token_file: str | None  # None: started with --insecure
    created_at: float
    nodes: list[RayNode]

    def node(self, name: str) -> RayNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    @property
    def head_ip(self) -> str:
        return self.address.rpartition(":")[0]

    def local_json(self) -> dict:
        """What `cluster local --json` prints: the address and each host's node address and Ray pids."""
        hosts = [n for n in self.nodes if n.role == "host"]
        return {
            "address": self.address,
            "head": {"node_ip": self.head_ip, "pids": self._head_pids()},
            "hosts": [{"name": n.name, "node_ip": n.node_ip, "pids": n.pids} for n in hosts],
        }

    def _head_pids(self) -> list[int]:
        return [pid for n in self.nodes if n.role == "head" for pid in n.pids]


# ---- where things live ----------------------------------------------------------------------------------
def default_cluster_dir() -> Path:
    return Path(os.environ.get(ENV_CLUSTER_DIR) or cache_dir() / "cluster" / "default")


def read_cluster(cluster_dir: Path) -> ClusterState | None:
    path = cluster_dir / STATE_FILE
    if not path.is_file():
        return None
    return ClusterState.model_validate(json.loads(path.read_text()))


def write_cluster(cluster_dir: Path, state: ClusterState) -> None:
    cluster_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(cluster_dir / STATE_FILE, state.model_dump_json(indent=2))


def ray_temp_root(cluster_dir: Path) -> Path:
    """Ray's temp dir for this cluster's nodes. Short on purpose: Ray puts unix sockets under it and a
    socket path may have at most 107 bytes (it adds ~60: session_<date>_<pid>/sockets/plasma_store)."""
    digest = hashlib.sha256(str(cluster_dir.resolve()).encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"gpumix-ray-{os.getuid()}" / digest


def node_alive(node: RayNode) -> bool:
    return bool(procs.session_processes(node.session, node.started_at))


def refuse_if_running(cluster_dir: Path) -> None:
    state = read_cluster(cluster_dir)
    if state is not None and any(node_alive(n) for n in state.nodes):
        raise GpumixError(
            f"a Ray cluster started from {cluster_dir} is still running ({state.kind}, {state.address})",
            hint="`gpumix cluster down` first, or pass another --cluster-dir",
        )


# ---- one `ray start` ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NodeRequest:
    name: str
    node_ip: str
    temp_dir: Path
    head: bool = False
    gcs_address: str | None = None  # a host node: the head's address
    port: int | None = None  # a head node: GCS port (0 = any free one)
    labels: dict[str, str] = field(default_factory=dict)
    resources: dict[str, float] = field(default_factory=dict)
    num_cpus: int | None = None  # None: Ray counts them
    object_store_bytes: int | None = None
    slim: bool = False  # a test node: no log monitor, dynamic agent port, a free dashboard port


def ray_start_argv(ray: str, req: NodeRequest, dashboard_port: int | None = None) -> list[str]:
    """The exact `ray start` command line of one node (dashboard GUI off, usage stats off)."""
    argv = [ray, "start", "--node-ip-address", req.node_ip, "--temp-dir", str(req.temp_dir), "--disable-usage-stats"]
    if req.head:
        argv += ["--head", "--port", str(req.port if req.port is not None else DEFAULT_HEAD_PORT), "--include-dashboard", "false"]
        if dashboard_port is not None:
            argv += ["--dashboard-port", str(dashboard_port)]
    else:
        if not req.gcs_address:
            raise GpumixError(f"node {req.name}: a host node needs the head's address")
        argv += ["--address", req.gcs_address]
    if req.labels:
        argv += ["--labels", ",".join(f"{k}={v}" for k, v in sorted(req.labels.items()))]
    if req.resources:
        argv += ["--resources", json.dumps(req.resources, sort_keys=True)]
    if req.num_cpus is not None:
        argv += ["--num-cpus", str(req.num_cpus)]
    if req.object_store_bytes is not None:
        argv += ["--object-store-memory", str(req.object_store_bytes)]
    if req.slim:
        argv += ["--include-log-monitor", "false", "--dashboard-agent-listen-port", "0", "--num-gpus", "0"]
    return argv


def cluster_env(base: dict[str, str], token_file: Path | None, fast_health: bool) -> dict[str, str]:
    """Environment of every `ray start`: gpumix's auth, no usage stats, no pre-started idle workers.

    Health checks (GCS side, so the head's values count): Ray's defaults declare a node dead after
    ~15 s (period 3 s x 5 failures, ray_config_def.h); gpumix uses 2 s x 5 on real clusters and 1 s x 3 on
    a test cluster, where a killed host must be noticed quickly."""
    period_ms, threshold = (1000, 3) if fast_health else (2000, 5)
    tuning = {
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_health_check_period_ms": str(period_ms),
        "RAY_health_check_timeout_ms": str(period_ms),
        "RAY_health_check_failure_threshold": str(threshold),
        "RAY_health_check_initial_delay_ms": "1000",
        "RAY_enable_worker_prestart": "0",  # a host agent is one worker; idle Python workers only cost RAM
        "RAY_prestart_worker_first_driver": "0",
        # A Ray worker that exits SIGKILLs its child processes by default; a host agent's child is gpumix's
        # supervisor, which must live to stop its engines (SIGTERM, grace, SIGKILL). Killed instead, it leaves each
        # engine to its own SIGTERM shutdown: llama-server kept a request open 60 s after its host died.
        "RAY_kill_child_processes_on_worker_exit": "0",
    }
    return with_auth(base, token_file) | tuning


def start_node(req: NodeRequest, env: dict[str, str], log_path: Path, timeout_s: float = START_TIMEOUT_S,
               cancel: threading.Event | None = None) -> RayNode:  # fmt: skip
    """Run `ray start` for one node; on failure (or `cancel`) leave nothing of it running and raise a one-line error."""
    req.temp_dir.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    dashboard_port = _free_port(req.node_ip) if req.head and req.slim else None
    argv = ray_start_argv(ray_executable(), req, dashboard_port)
    started_at = time.time()
    with log_path.open("ab") as log:
        log.write(f"\n==== gpumix: {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # fmt: skip
    code = _wait(proc, timeout_s, cancel)
    if code != 0:
        procs.terminate(procs.with_descendants(procs.session_processes(proc.pid, started_at)), grace_s=5.0)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
        if code is None:
            reason = "stopped: another node of the cluster failed" if cancel and cancel.is_set() else f"did not start within {timeout_s:g} s"
        else:
            reason = start_failure(log_path, req)
        _remove_empty_dirs(req.temp_dir)
        raise GpumixError(f"Ray node {req.name} ({req.node_ip}): {reason}", hint=f"`ray start` log: {log_path}")
    pids = [p.pid for p in procs.session_processes(proc.pid, started_at)]
    return RayNode(name=req.name, role="head" if req.head else "host", host=req.labels.get(HOST_LABEL),
                   node_ip=req.node_ip, session=proc.pid, started_at=started_at, pids=sorted(pids),
                   temp_dir=str(req.temp_dir), log=str(log_path), resources=req.resources)  # fmt: skip


def _wait(proc: subprocess.Popen, timeout_s: float, cancel: threading.Event | None) -> int | None:
    """The exit code of `ray start`; None on timeout or when cancelled."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not (cancel and cancel.is_set()):
        try:
            return proc.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            continue
    return None


def _remove_empty_dirs(path: Path) -> None:
    """The temp dir of a node that never started, and its parents up to the first one in use."""
    with contextlib.suppress(OSError):
        while path != path.parent:
            path.rmdir()  # only if empty
            path = path.parent


def start_failure(log_path: Path, req: NodeRequest) -> str:
    """Why `ray start` failed, in one line, from its output."""
    text = log_path.read_text(errors="replace") if log_path.is_file() else ""
    text = text[text.rfind("==== gpumix:") :]
    if "InvalidAuthToken" in text or "AuthenticationError" in text:
        return "the head refused this node: the cluster token is missing or wrong"
    if "Failed to connect to GCS" in text:
        return f"cannot reach the head at {req.gcs_address}"
    if "Address already in use" in text or "already running at" in text:
        return "a port it needs is taken (is a Ray node already running here?)"
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("====")]
    errors = [line for line in lines if "Error" in line or "error" in line]
    return (errors or lines or ["`ray start` failed without output"])[-1][:300]


def head_address(temp_dir: Path) -> str:
    """The GCS address a head wrote to <temp dir>/ray_current_cluster (Ray 2.60 does so on start)."""
    path = temp_dir / "ray_current_cluster"
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise GpumixError(f"the Ray head started but {path} is missing ({exc})") from None


def route_ip(toward: str) -> str:
    """This machine's address on the route to `toward` (no packet is sent), as Ray itself picks it."""
    host = toward.rpartition(":")[0] or toward
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((host, 9))
            return str(sock.getsockname()[0])
        except OSError:
            return "127.0.0.1"


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# ---- devices a host offers -------------------------------------------------------------------------------
def host_resources(host: str, gpu_indices: list[int]) -> dict[str, float]:
    """One resource of capacity 1 per device: the CPU, and each GPU by PCI-bus-order index."""
    ids = [CPU_DEVICE] + [f"gpu{i}" for i in gpu_indices]
    return {device_resource(device_id(host, local)): 1.0 for local in ids}


def local_gpu_indices(say: Say) -> list[int]:
    """This machine's GPUs (PCI bus order) through NVML; none when there is no NVIDIA driver."""
    from gpumix.hardware.discovery import discover_machine

    try:
        machine = discover_machine()
    except GpumixError as exc:
        say(f"no GPUs ({exc.message}): this host offers its CPU only")
        return []
    return [gpu.device.index for gpu in machine.gpus]


# ---- the commands ----------------------------------------------------------------------------------------
def _token(token_file: Path, insecure: bool, create: bool) -> Path | None:
    if insecure:
        return None
    return ensure_token(token_file) if create else check_token_file(token_file)


def start_local(hosts: list[str], cluster_dir: Path, token_file: Path, insecure: bool = False,
                say: Say = print, timeout_s: float = START_TIMEOUT_S) -> ClusterState:  # fmt: skip
    """A whole test cluster on this machine: a head on 127.0.0.254 and one node per host on 127.0.0.2, ...

    Each host offers this machine's CPU as its one device. Nodes are slim (no dashboard GUI, no log monitor,
    80 MiB object store) and dead nodes are noticed within a few seconds. The head and the hosts start at the
    same time (the hosts wait for the head's GCS on a port chosen here); every node is recorded as soon as it
    is up, so `down` can clean up after any failure or interruption."""
    names = _local_hosts(hosts)
    refuse_if_running(cluster_dir)
    token = _token(token_file, insecure, create=True)
    env = cluster_env(dict(os.environ), token, fast_health=True)
    temp_root = ray_temp_root(cluster_dir)
    shutil.rmtree(temp_root, ignore_errors=True)
    port = _free_port("0.0.0.0")  # probe only: Ray's GCS listens on every interface at this port
    state = ClusterState(kind="local", address=f"{LOCAL_HEAD_IP}:{port}", token_file=_str(token), created_at=time.time(), nodes=[])
    write_cluster(cluster_dir, state)
    head = NodeRequest(name="head", node_ip=LOCAL_HEAD_IP, temp_dir=temp_root / "head", head=True, port=port,
                       num_cpus=0, object_store_bytes=LOCAL_OBJECT_STORE_BYTES, slim=True)  # fmt: skip
    requests = [head] + [
        NodeRequest(name=name, node_ip=f"127.0.0.{LOCAL_FIRST_IP + i}", temp_dir=temp_root / f"n{i}",
                    gcs_address=state.address, labels={HOST_LABEL: name}, resources=host_resources(name, []),
                    num_cpus=1, object_store_bytes=LOCAL_OBJECT_STORE_BYTES, slim=True)  # fmt: skip
        for i, name in enumerate(names)
    ]
    # A host's `ray start` waits this long for the head's GCS (Ray's default is ~20 tries of 1 s).
    host_env = env | {"RAY_gcs_server_port_wait_time_s": str(int(timeout_s))}
    say(f"starting the Ray head on {LOCAL_HEAD_IP} and {len(names)} host node(s): "
        + ", ".join(f"{r.name} on {r.node_ip}" for r in requests[1:]))  # fmt: skip
    cancel, lock = threading.Event(), threading.Lock()

    def run(req: NodeRequest) -> RayNode:
        node = start_node(req, env if req.head else host_env, cluster_dir / "logs" / f"{req.name}.log", timeout_s, cancel)
        with lock:
            state.nodes.append(node)
            state.nodes.sort(key=lambda n: [r.name for r in requests].index(n.name))
            write_cluster(cluster_dir, state)
        return node

    errors: list[GpumixError] = []
    try:
        with ThreadPoolExecutor(max_workers=len(requests)) as pool:
            futures = [pool.submit(run, r) for r in requests]
            try:
                for future in as_completed(futures):
                    try:
                        future.result()
                    except GpumixError as exc:
                        errors.append(exc)
                        cancel.set()
            except BaseException:  # Ctrl-C: the other starts give up before the pool waits for them
                cancel.set()
                raise
    except BaseException:
        stop_cluster(cluster_dir, say=lambda _text: None)
        raise
    if errors:
        stop_cluster(cluster_dir, say=lambda _text: None)
        raise min(errors, key=lambda e: "another node of the cluster failed" in e.message)
    return state


def _local_hosts(hosts: list[str]) -> list[str]:
    names = [check_host_name(h.strip()) for h in hosts if h.strip()]
    if not names:
        raise GpumixError("no host names given", hint="pass --hosts a,b")
    if len(set(names)) != len(names):
        raise GpumixError(f"host names repeat in {','.join(names)}", hint="give each host its own name")
    if len(names) > LOCAL_MAX_HOSTS:
        raise GpumixError(f"{len(names)} hosts are more than a local cluster's {LOCAL_MAX_HOSTS}")
    return names


def _str(path: Path | None) -> str | None:
    return str(path) if path is not None else None


def start_head(cluster_dir: Path, token_file: Path, node_ip: str | None = None, port: int = DEFAULT_HEAD_PORT,
               host: str | None = None, cpu_only: bool = False, insecure: bool = False, say: Say = print,
               timeout_s: float = START_TIMEOUT_S) -> ClusterState:  # fmt: skip
    """The head of a real cluster, on the gateway machine. With `host`, it is also that plan host."""
    refuse_if_running(cluster_dir)
    ip = check_ray_node_ip(node_ip or route_ip("8.8.8.8"))
    token = _token(token_file, insecure, create=True)
    labels, resources = _host_offer(host, cpu_only, say)
    temp_dir = ray_temp_root(cluster_dir) / "head"
    req = NodeRequest(name=host or "head", node_ip=ip, temp_dir=temp_dir, head=True, port=port, labels=labels,
                      resources=resources)  # fmt: skip
    say(f"starting the Ray head on {ip}:{port} ...")
    node = start_node(req, cluster_env(dict(os.environ), token, fast_health=False), cluster_dir / "logs" / "head.log", timeout_s)
    state = ClusterState(kind="head", address=head_address(temp_dir), token_file=_str(token), created_at=node.started_at,
                         nodes=[node])  # fmt: skip
    write_cluster(cluster_dir, state)
    return state


def join_cluster(address: str, host: str, cluster_dir: Path, token_file: Path, node_ip: str | None = None,
                 cpu_only: bool = False, insecure: bool = False, say: Say = print,
                 timeout_s: float = START_TIMEOUT_S) -> ClusterState:  # fmt: skip
    """This machine joins the cluster at `address` as plan host `host` (label + one resource per device)."""
    check_host_name(host)
    _check_address(address)
    previous = read_cluster(cluster_dir)
    running = [n for n in previous.nodes if node_alive(n)] if previous is not None else []
    if previous is not None and running and (previous.kind == "local" or previous.address != address):
        refuse_if_running(cluster_dir)  # another cluster from this dir: one cluster per cluster dir
    if any(n.name == host for n in running):
        raise GpumixError(f"host {host} already runs a Ray node from {cluster_dir}", hint="`gpumix cluster down` first")
    ip = check_ray_node_ip(node_ip or route_ip(address))
    token = _token(token_file, insecure, create=False)
    labels, resources = _host_offer(host, cpu_only, say)
    temp_dir = ray_temp_root(cluster_dir) / _short(host)
    req = NodeRequest(name=host, node_ip=ip, temp_dir=temp_dir, gcs_address=address, labels=labels, resources=resources)
    say(f"joining {address} as host {host} ({ip}) ...")
    env = cluster_env(dict(os.environ), token, fast_health=False)
    node = start_node(req, env, cluster_dir / "logs" / f"{host}.log", timeout_s)
    kind = previous.kind if previous is not None and running else "join"  # a head machine may also join as a host
    state = ClusterState(kind=kind, address=address, token_file=_str(token), created_at=node.started_at,
                         nodes=[*running, node])  # fmt: skip
    write_cluster(cluster_dir, state)
    return state


def _short(host: str) -> str:
    """A host's temp dir name: short (socket paths), unique per host name."""
    return host if len(host) <= 12 else host[:4] + hashlib.sha256(host.encode()).hexdigest()[:8]


def _check_address(address: str) -> None:
    ip, _, port = address.rpartition(":")
    if not ip or not port.isdigit():
        raise GpumixError(f"{address!r} is not a head address", hint="pass IP:PORT as `gpumix cluster head` printed it")
    check_ray_node_ip(ip)


def _host_offer(host: str | None, cpu_only: bool, say: Say) -> tuple[dict[str, str], dict[str, float]]:
    if host is None:
        return {}, {}
    check_host_name(host)
    gpus = [] if cpu_only else local_gpu_indices(say)
    return {HOST_LABEL: host}, host_resources(host, gpus)


@dataclass
class StopReport:
    nodes: list[str] = field(default_factory=list)
    killed: list[int] = field(default_factory=list)  # pids that needed SIGKILL
    left: list[int] = field(default_factory=list)  # pids still alive afterwards (should be empty)


def stop_cluster(cluster_dir: Path, say: Say = print, grace_s: float | None = None,
                 keep_ray_logs: bool = False) -> StopReport | None:  # fmt: skip
    """Stop every node this machine started from `cluster_dir`; no process left.

    Each node's processes are its session's members (Ray's own and its workers) plus their descendants (the
    supervisors and engines of host agents). Ray's temp dirs (its session logs and sockets) go too, unless
    keep_ray_logs; the `ray start` logs in <cluster dir>/logs stay."""
    state = read_cluster(cluster_dir)
    if state is None:
        return None
    report = StopReport()
    grace_s = grace_s if grace_s is not None else (LOCAL_STOP_GRACE_S if state.kind == "local" else STOP_GRACE_S)
    for node in state.nodes:
        count = len(procs.with_descendants(procs.session_processes(node.session, node.started_at)))
        if count:
            say(f"stopping Ray node {node.name} ({node.node_ip}): {count} process(es)")
        report.nodes.append(node.name)
    for sweep in range(3):  # a worker or engine started during the grace period is caught by the next sweep
        members = [p for n in state.nodes for p in procs.with_descendants(procs.session_processes(n.session, n.started_at))]
        if not members:
            break
        report.killed += procs.terminate(members, grace_s if sweep == 0 else 2.0)  # all nodes at once
        report.left = [p.pid for p in procs.alive(members)]
    if not keep_ray_logs:
        for node in state.nodes:
            shutil.rmtree(node.temp_dir, ignore_errors=True)
        _remove_empty_dirs(ray_temp_root(cluster_dir))
    (cluster_dir / STATE_FILE).unlink(missing_ok=True)
    return report
