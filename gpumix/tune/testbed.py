"""A heterogeneous test bed without GPUs: ggml-rpc-server processes of different speeds on one machine.

Each server runs one thread pinned to its own core; a slower one runs in a cgroup with a CPU quota (cgroup v1:
`cpu/<name>/cpu.cfs_quota_us` of `cpu.cfs_period_us`; v2: `cpu.max` "quota period" with the cpu controller
enabled in the parent's `cgroup.subtree_control`), over a short period (see CFS_PERIOD_US). llama.cpp sees them as RPC0, RPC1, ... — real devices of
different speed (VISION.md, "A heterogeneous test bed without GPUs"). State lives in ~/.cache/gpumix/testbed.json
so `gpumix testbed down` can remove the processes and cgroups later.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import psutil

from gpumix.errors import GpumixError
from gpumix.launch.llamacpp import cache_dir
from gpumix.netutil import free_ports, port_is_free

CGROUP_ROOT = Path("/sys/fs/cgroup")
# CFS bandwidth control gives a group `quota` µs of CPU per `period` µs (Documentation/scheduler/sched-bwc.rst;
# the kernel's minimum quota is 1 ms). With the default 100 ms period a throttled RPC server is not a slower device
# but a bursty one: in a layer split it idles while the other device works, so its 40 ms budget covers its whole
# share of a ~60 ms token at full core speed (measured on this test bed: 2 layers + output on the "0.4" device ran
# 18.4 t/s, the same device alone 12.7). A 5 ms period throttles inside every token, as a slower chip would.
CFS_PERIOD_US = 5_000
MIN_QUOTA_US = 1_000


def cfs_quota_period_us(fraction: float) -> tuple[int, int]:
    """(quota, period) for a CPU share: the short period, lengthened where the quota would fall below 1 ms."""
    period = max(CFS_PERIOD_US, int(round(MIN_QUOTA_US / fraction)))
    return max(int(round(fraction * period)), MIN_QUOTA_US), period
_READY_TIMEOUT_S = 15.0


def state_path() -> Path:
    return cache_dir() / "testbed.json"


@dataclass(frozen=True)
class TestbedServer:
    role: str  # fast | slow | ...
    cpu_fraction: float  # share of one core it may use
    host: str
    port: int
    pid: int
    core: int
    cgroup: str | None  # directory of its cgroup, None when unthrottled
    log: str

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def label(self) -> str:
        return f"{self.role} ({self.cpu_fraction:g} of core {self.core})"


@dataclass(frozen=True)
class Testbed:
    servers: tuple[TestbedServer, ...]
    cgroup_version: int | None
    created: str

    @property
    def rpc(self) -> str:
        return ",".join(s.address for s in self.servers)

    def to_json(self) -> dict:
        return {
            "rpc": self.rpc,
            "devices": [f"RPC{i}" for i in range(len(self.servers))],
            "cgroup_version": self.cgroup_version,
            "created": self.created,
            "servers": [asdict(s) | {"address": s.address, "alive": server_alive(s)} for s in self.servers],
        }


# ---- cgroups -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CgroupCpu:
    version: int  # 1 or 2
    parent: Path  # v1: /sys/fs/cgroup/cpu (or cpu,cpuacct); v2: /sys/fs/cgroup

    def create(self, name: str, fraction: float) -> Path:
        path = self.parent / name
        quota, period = cfs_quota_period_us(fraction)
        try:
            if self.version == 2:
                _enable_cpu_controller(self.parent)
            path.mkdir(exist_ok=True)
            if self.version == 1:
                (path / "cpu.cfs_quota_us").write_text("-1")  # lift the old quota so any period is accepted
                (path / "cpu.cfs_period_us").write_text(str(period))
                (path / "cpu.cfs_quota_us").write_text(str(quota))
            else:
                (path / "cpu.max").write_text(f"{quota} {period}")
        except OSError as exc:
            _remove_dir(path)
            raise GpumixError(
                f"cannot set a CPU quota in cgroup {path}: {exc.strerror or exc}",
                hint="run as root with a writable cgroup filesystem (containers: --privileged or a delegated "
                "cgroup), or use --slow 1.0 for an unthrottled test bed",
            ) from exc
        return path

    def procs_file(self, path: Path) -> Path:
        return path / "cgroup.procs"


def detect_cgroup_cpu(root: Path = CGROUP_ROOT) -> CgroupCpu:
    if (root / "cgroup.controllers").is_file():  # unified (v2) hierarchy
        if "cpu" not in (root / "cgroup.controllers").read_text().split():
            raise GpumixError(f"cgroup v2 at {root} has no cpu controller", hint="the kernel needs CONFIG_CFS_BANDWIDTH")
        return CgroupCpu(2, root)
    for name in ("cpu", "cpu,cpuacct"):
        if (root / name / "cpu.cfs_quota_us").is_file():
            return CgroupCpu(1, root / name)
    raise GpumixError(
        f"no cgroup CPU controller found under {root} (neither v2 cgroup.controllers nor v1 cpu/cpu.cfs_quota_us)",
        hint="mount cgroups (`mount -t cgroup2 none /sys/fs/cgroup`), or use --slow 1.0 for an unthrottled test bed",
    )


def _enable_cpu_controller(parent: Path) -> None:
    control = parent / "cgroup.subtree_control"
    if "cpu" not in control.read_text().split():
        control.write_text("+cpu")


def _remove_dir(path: Path) -> bool:
    try:
        path.rmdir()
        return True
    except FileNotFoundError:
        return True
    except OSError:
        return False


# ---- processes -----------------------------------------------------------------------------------------------


def _wait_ready(proc: subprocess.Popen, host: str, port: int, log: Path) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-600:] if log.is_file() else ""
            raise GpumixError(f"ggml-rpc-server on port {port} exited (code {proc.returncode})", hint=tail.strip())
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise GpumixError(f"ggml-rpc-server on port {port} did not accept connections within {_READY_TIMEOUT_S:.0f} s")


def _start_server(
    binary: Path, host: str, port: int, core: int, cgroup_procs: Path | None, log: Path
) -> subprocess.Popen:
    def in_child() -> None:  # runs in the child before exec: every thread it starts inherits core and cgroup
        os.sched_setaffinity(0, {core})
        if cgroup_procs is not None:
            cgroup_procs.write_text(str(os.getpid()))

    argv = [str(binary), "-t", "1", "-H", host, "-p", str(port)]
    with log.open("wb") as out:
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=in_child,
            start_new_session=True,  # outlives `gpumix testbed up`; `testbed down` ends it
        )  # fmt: skip


def server_alive(server: TestbedServer) -> bool:
    try:
        proc = psutil.Process(server.pid)
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE and "ggml-rpc-server" in " ".join(
            proc.cmdline()
        )
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def testbed_up(
    speeds: Sequence[tuple[str, float]] = (("fast", 1.0), ("slow", 0.4)),
    *,
    port_base: int | None = None,
    host: str = "127.0.0.1",
    binary: Path | None = None,
    path: Path | None = None,
) -> Testbed:
    """Start one ggml-rpc-server per (role, cpu_fraction), each pinned to its own core (cores are reused when
    there are fewer cores than servers), throttled below 1.0 with a cgroup CPU quota."""
    path = path or state_path()
    existing = _read_state(path)
    if existing and any(server_alive(s) for s in existing.servers):
        raise GpumixError(
            f"a test bed is already up ({existing.rpc})", hint="use it, or run `gpumix testbed down` first"
        )
    for role, fraction in speeds:
        if not 0 < fraction <= 1:
            raise GpumixError(f"--{role} {fraction}: the CPU share must be in (0, 1]")
    if binary is None:
        from gpumix.launch.llamacpp import require_llama_cpp

        binary = require_llama_cpp().binary("ggml-rpc-server")
    ports = _choose_ports(host, len(speeds), port_base)
    cores = sorted(os.sched_getaffinity(0))
    cg = detect_cgroup_cpu() if any(f < 1 for _, f in speeds) else None
    log_dir = path.parent / "testbed-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    servers: list[TestbedServer] = []
    groups: list[Path] = []
    bed = Testbed((), cg.version if cg else None, datetime.now(UTC).isoformat(timespec="seconds"))
    try:
        for i, ((role, fraction), port) in enumerate(zip(speeds, ports, strict=True)):
            core = cores[i % len(cores)]
            group = cg.create(f"gpumix-testbed-{port}", fraction) if cg and fraction < 1 else None
            if group:
                groups.append(group)
            log = log_dir / f"rpc-{port}.log"
            proc = _start_server(binary, host, port, core, cg.procs_file(group) if cg and group else None, log)
            servers.append(TestbedServer(role, fraction, host, port, proc.pid, core, str(group) if group else None,
                                         str(log)))  # fmt: skip
            bed = Testbed(tuple(servers), bed.cgroup_version, bed.created)
            _write_state(path, bed)  # after each server, so a failure half-way can still be cleaned up
            _wait_ready(proc, host, port, log)
    except BaseException:
        _teardown(bed, path)
        for group in groups:  # one created for a server that never started
            _remove_dir(group)
        raise
    return bed


def _choose_ports(host: str, count: int, port_base: int | None) -> list[int]:
    if port_base is None:
        return free_ports(count, host)
    ports = list(range(port_base, port_base + count))
    taken = [p for p in ports if not port_is_free(p, host)]
    if taken:
        raise GpumixError(
            f"port{'s' if len(taken) > 1 else ''} {', '.join(map(str, taken))} on {host} already in use",
            hint="pick another --port-base, or leave it out to use free ports",
        )
    return ports


def testbed_down(path: Path | None = None) -> list[str]:
    """Stop the servers and remove their cgroups; returns what was done (empty when nothing was up)."""
    path = path or state_path()
    bed = _read_state(path)
    if bed is None:
        return []
    return _teardown(bed, path)


def _teardown(bed: Testbed, path: Path) -> list[str]:
    done: list[str] = []
    for server in bed.servers:
        if server_alive(server):
            proc = psutil.Process(server.pid)
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except psutil.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            done.append(f"stopped ggml-rpc-server pid {server.pid} ({server.address})")
    problems: list[str] = []
    for server in bed.servers:
        if server.cgroup:
            group = Path(server.cgroup)
            if group.exists():
                if _remove_dir(group):
                    done.append(f"removed cgroup {group}")
                else:
                    problems.append(str(group))
    path.unlink(missing_ok=True)
    if problems:
        raise GpumixError(f"could not remove cgroup(s) {', '.join(problems)}", hint="rmdir them once empty")
    return done


def testbed_status(path: Path | None = None) -> Testbed | None:
    return _read_state(path or state_path())


def _read_state(path: Path) -> Testbed | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        servers = tuple(TestbedServer(**s) for s in data["servers"])
        return Testbed(servers, data.get("cgroup_version"), data.get("created", ""))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise GpumixError(f"test bed state {path} is unreadable ({exc})", hint=f"delete {path}") from exc


def _write_state(path: Path, bed: Testbed) -> None:
    data = {
        "cgroup_version": bed.cgroup_version,
        "created": bed.created,
        "servers": [asdict(s) for s in bed.servers],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
