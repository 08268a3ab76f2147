"""Connecting to a running cluster as a Ray driver (status, the host agents, `up --ray`)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import IO

from gpumix.cluster.auth import RAY_AUTH_VARS, auth_env
from gpumix.cluster.names import AGENT_NAMESPACE
from gpumix.cluster.nodes import ClusterState
from gpumix.cluster.raycli import require_ray
from gpumix.errors import GpumixError


def driver_node_ip(state: ClusterState) -> str | None:
    """The address of this machine's own node of the cluster: a driver attaches to that node's raylet."""
    return state.nodes[0].node_ip if state.nodes else None


@contextlib.contextmanager
def connected(address: str, token_file: Path | None, node_ip: str | None = None) -> Iterator[ModuleType]:
    """`ray` connected to the cluster at `address` in gpumix's namespace; disconnects on exit.

    The auth variables are set before Ray reads them (Ray caches its config per process), so one process
    talks to one cluster with one token."""
    require_ray()
    saved = {name: os.environ.get(name) for name in (*RAY_AUTH_VARS, "RAY_USAGE_STATS_ENABLED")}
    for name in RAY_AUTH_VARS:
        os.environ.pop(name, None)
    os.environ.update(auth_env(token_file))
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():
        ray.shutdown()
    _reload_auth()
    try:
        with tempfile.TemporaryFile() as captured:
            try:
                with _stderr_to(captured):  # Ray's C++ client logs each failed attempt to fd 2
                    ray.init(address=address, namespace=AGENT_NAMESPACE, logging_level=logging.WARNING,
                             log_to_driver=False, _node_ip_address=node_ip)  # fmt: skip
            except (ray.exceptions.AuthenticationError, ConnectionError, RuntimeError) as exc:
                captured.seek(0)
                said = captured.read().decode(errors="replace") + str(exc)
                if isinstance(exc, ray.exceptions.AuthenticationError) or "InvalidAuthToken" in said:
                    raise GpumixError(f"the cluster at {address} refused the token",
                                      hint="pass the head's token file with --token-file") from None  # fmt: skip
                raise GpumixError(f"cannot reach the Ray cluster at {address}: {_first_line(exc)}",
                                  hint="is it running? `gpumix cluster status` on the head machine") from None  # fmt: skip
        try:
            yield ray
        finally:
            ray.shutdown()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _reload_auth() -> None:
    """Ray caches the auth mode and token per process (C++ singletons); a process that talks to a second
    cluster (or the same one after its token changed) must reload them, as Ray's own CLI does."""
    with contextlib.suppress(Exception):
        # Ray's private Cython module has no type stubs; these are the calls its own CLI makes.
        from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()


@contextlib.contextmanager
def _stderr_to(target: IO[bytes]) -> Iterator[None]:
    """Point file descriptor 2 (where native code writes) at `target` for the duration."""
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(target.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__


def connect_state(state: ClusterState) -> contextlib.AbstractContextManager[ModuleType]:
    token = Path(state.token_file) if state.token_file else None
    return connected(state.address, token, driver_node_ip(state))
