"""`gpumix cluster head|join|local|status|down`: thin wrappers over gpumix.cluster (which wraps `ray start`)."""

from __future__ import annotations

import json
import sys
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from gpumix.errors import GpumixError

if TYPE_CHECKING:
    from gpumix.cluster.nodes import RayNode
    from gpumix.cluster.status import ClusterReport

cluster_app = typer.Typer(
    help="A Ray cluster of plan hosts (needs `pip install 'gpumix\\[ray]'`): head, join, local, status, down.",
    no_args_is_help=True,
)
console = Console(soft_wrap=True)  # long paths and addresses stay on one line
err = Console(stderr=True, soft_wrap=True)

_CLUSTER_DIR = typer.Option("--cluster-dir", help="where cluster.json and the `ray start` logs live "
                            "(default ~/.cache/gpumix/cluster/default, or $GPUMIX_CLUSTER_DIR)")  # fmt: skip
_TOKEN_FILE = typer.Option("--token-file", help="the cluster token (default ~/.config/gpumix/ray-token, mode 0600)")
_INSECURE = typer.Option("--insecure", help="no token authentication: anyone who reaches the ports can run code")
_NODE_IP = typer.Option("--node-ip", help="this machine's address on the cluster network (Ray advertises it; "
                        "engines bind it); default: the address on the route to the head")  # fmt: skip
_CPU_ONLY = typer.Option("--cpu-only", help="offer only the CPU as a device, even if NVML finds GPUs")


def _dirs(cluster_dir: Path | None, token_file: Path | None) -> tuple[Path, Path]:
    from gpumix.cluster.auth import default_token_file
    from gpumix.cluster.nodes import default_cluster_dir
    from gpumix.cluster.raycli import require_ray

    require_ray()
    return (cluster_dir or default_cluster_dir()).resolve(), (token_file or default_token_file()).resolve()


def _say(text: str) -> None:
    err.print(text, highlight=False, markup=False)


def _warn_insecure(insecure: bool) -> None:
    if insecure:
        _say("WARNING: --insecure: token authentication is off; anyone who can reach this machine's Ray ports "
             "can run code on it")  # fmt: skip


def _print_nodes(nodes: list[RayNode], token_file: Path | None) -> None:
    for node in nodes:
        devices = ", ".join(r.removeprefix("gpumix.io/dev/") for r in node.resources) or "-"
        console.print(f"{node.name}: Ray node on {node.node_ip} (pids {', '.join(map(str, node.pids))}); devices: {devices}",
                      highlight=False, markup=False)  # fmt: skip
    if token_file is not None:
        console.print(f"token: {token_file} (mode 0600); hosts need a copy of it to join", highlight=False, markup=False)


@cluster_app.command("head")
def head(
    node_ip: Annotated[str | None, typer.Option("--node-ip", "--address", help="this machine's address that the "
                                                "hosts reach; default: the one on the default route")] = None,  # fmt: skip
    port: Annotated[int, typer.Option("--port", help="Ray's GCS port on the head")] = 6379,
    host: Annotated[str | None, typer.Option("--host", help="also run plan host NAME's services here")] = None,
    cpu_only: Annotated[bool, _CPU_ONLY] = False,
    insecure: Annotated[bool, _INSECURE] = False,
    token_file: Annotated[Path | None, _TOKEN_FILE] = None,
    cluster_dir: Annotated[Path | None, _CLUSTER_DIR] = None,
) -> None:
    """Start the Ray head on the gateway machine (token authentication on; the token is created if missing)."""
    from gpumix.cluster.nodes import start_head

    directory, token = _dirs(cluster_dir, token_file)
    _warn_insecure(insecure)
    state = start_head(directory, token, node_ip=node_ip, port=port, host=host, cpu_only=cpu_only, insecure=insecure, say=_say)
    _print_nodes(state.nodes, None if insecure else token)
    console.print(f"address: {state.address}", highlight=False, markup=False)
    console.print(f"on each host: gpumix cluster join {state.address} --host NAME", highlight=False, markup=False)


@cluster_app.command("join")
def join(
    address: Annotated[str, typer.Argument(help="the head's address, IP:PORT, as `gpumix cluster head` printed it")],
    host: Annotated[str, typer.Option("--host", help="this machine's plan host name (the plan file's `host:`)")],
    node_ip: Annotated[str | None, _NODE_IP] = None,
    cpu_only: Annotated[bool, _CPU_ONLY] = False,
    insecure: Annotated[bool, _INSECURE] = False,
    token_file: Annotated[Path | None, _TOKEN_FILE] = None,
    cluster_dir: Annotated[Path | None, _CLUSTER_DIR] = None,
) -> None:
    """Join a cluster as one plan host: a Ray node labelled with the host name, one resource per device."""
    from gpumix.cluster.nodes import join_cluster

    directory, token = _dirs(cluster_dir, token_file)
    _warn_insecure(insecure)
    state = join_cluster(address, host, directory, token, node_ip=node_ip, cpu_only=cpu_only, insecure=insecure, say=_say)
    _print_nodes([state.node(host)], None)


@cluster_app.command("local")
def local(
    hosts: Annotated[str, typer.Option("--hosts", help="comma-separated plan host names, e.g. a,b")],
    as_json: Annotated[bool, typer.Option("--json", help="print {address, hosts: [{name, node_ip, pids}]}")] = False,
    insecure: Annotated[bool, _INSECURE] = False,
    token_file: Annotated[Path | None, _TOKEN_FILE] = None,
    cluster_dir: Annotated[Path | None, _CLUSTER_DIR] = None,
) -> None:
    """A whole test cluster on this machine: a head on 127.0.0.254, each host on its own loopback address (127.0.0.2, ...)."""
    from gpumix.cluster.nodes import start_local

    directory, token = _dirs(cluster_dir, token_file)
    _warn_insecure(insecure)
    state = start_local(hosts.split(","), directory, token, insecure=insecure, say=_say)
    if as_json:
        print(json.dumps(state.local_json()))
        return
    _print_nodes(state.nodes, None if insecure else token)
    console.print(f"address: {state.address}; `gpumix cluster status` / `gpumix cluster down`", highlight=False, markup=False)


@cluster_app.command("status")
def status(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable")] = False,
    address: Annotated[str | None, typer.Option("--address", help="a cluster not started from --cluster-dir")] = None,
    token_file: Annotated[Path | None, _TOKEN_FILE] = None,
    cluster_dir: Annotated[Path | None, _CLUSTER_DIR] = None,
) -> None:
    """Hosts with their devices, alive or dead, and the host agents (services) on them."""
    from gpumix.cluster.client import connect_state, connected
    from gpumix.cluster.nodes import read_cluster
    from gpumix.cluster.status import cluster_report

    directory, token = _dirs(cluster_dir, token_file)
    state = read_cluster(directory)
    if address is None and state is None:
        raise GpumixError(f"no cluster was started from {directory}", hint="pass --address IP:PORT (and --token-file), "
                          "or start one with `gpumix cluster head` / `gpumix cluster local`")  # fmt: skip
    connection: AbstractContextManager[Any]
    if address is not None:
        connection, shown = connected(address, token), address
    else:
        assert state is not None
        connection, shown = connect_state(state), state.address
    with connection as ray:
        report = cluster_report(ray, shown)
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
        return
    _print_report(report)


def _print_report(report: ClusterReport) -> None:
    console.print(f"cluster {report.address}", highlight=False, markup=False)
    hosts = Table(title="hosts")
    for col in ("host", "node ip", "state", "devices", "agents"):
        hosts.add_column(col)
    for h in report.hosts:
        name = h.name + (" (head)" if h.is_head else "")
        hosts.add_row(name, h.node_ip, "alive" if h.alive else "DEAD", ", ".join(h.devices) or "-", ", ".join(h.agents) or "-")
    console.print(hosts)
    if not report.agents:
        console.print("no host agents (services start with `gpumix up --ray`)")
        return
    agents = Table(title="host agents")
    for col in ("agent", "host", "node ip", "state", "processes"):
        agents.add_column(col)
    for a in report.agents:
        procs = ", ".join(f"{p['name']} {p['state']} {p['url']}" for p in a.processes) or (a.error or "-")
        agents.add_row(a.name, a.host or "-", a.node_ip or "-", a.state, procs)
    console.print(agents)


@cluster_app.command("down")
def down(
    keep_ray_logs: Annotated[bool, typer.Option("--keep-ray-logs", help="keep Ray's session logs in its temp dir")] = False,
    cluster_dir: Annotated[Path | None, _CLUSTER_DIR] = None,
) -> None:
    """Stop every Ray node started from this cluster dir (and the agents' engines on them); no process left."""
    from gpumix.cluster.nodes import read_cluster, stop_cluster
    from gpumix.cluster.raycli import require_ray

    directory = (cluster_dir or _default_cluster_dir()).resolve()
    if read_cluster(directory) is None:
        require_ray()  # stopping recorded processes needs no Ray; saying "nothing here" without it would mislead
    report = stop_cluster(directory, say=_say, keep_ray_logs=keep_ray_logs)
    if report is None:
        console.print(f"nothing to stop in {directory}", highlight=False, markup=False)
        return
    if report.left:
        raise GpumixError(f"processes still running after SIGKILL: {', '.join(map(str, report.left))}")
    extra = f"; {len(report.killed)} needed SIGKILL" if report.killed else ""
    console.print(f"stopped Ray node(s) {', '.join(report.nodes)}{extra}", highlight=False, markup=False)


def _default_cluster_dir() -> Path:
    from gpumix.cluster.nodes import default_cluster_dir

    return default_cluster_dir()


def register(app: typer.Typer) -> None:
    app.add_typer(cluster_app, name="cluster")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cluster_app())
