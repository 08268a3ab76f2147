"""Helpers for the gateway tests: fake backends, gateways, redis-server, queue workers; all cleaned up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from gpumix.netutil import free_port
from gpumix.plan.result import Plan, PlannedDevice, PlannedService

PY = sys.executable


def wait_http(url: str, timeout_s: float = 20.0, proc: subprocess.Popen | None = None, ok=(200,)) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=1.0).status_code in ok:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout_s} s")


class Procs:
    """Starts processes and guarantees they are gone at teardown."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen] = []

    def start(self, args: list[str], name: str) -> subprocess.Popen:
        log = (self.tmp / f"{name}-{len(self.procs)}.log").open("w")
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def backend(self, port: int | None = None, **opts: object) -> tuple[str, subprocess.Popen]:
        port = port or free_port()
        args = [PY, "-m", "gpumix.gateway.fake_backend", "--port", str(port)]
        for key, value in opts.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        proc = self.start(args, "backend")
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/health", proc=proc)
        return url, proc

    def gateway(self, *args: str, wait: bool = True) -> tuple[str, subprocess.Popen]:
        port = free_port()
        proc = self.start([PY, "-m", "gpumix", "gateway", "--port", str(port), *args], "gateway")
        url = f"http://127.0.0.1:{port}"
        if wait:
            wait_http(url + "/health", proc=proc, ok=(200, 503))
        return url, proc

    def kill(self, proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        if proc.poll() is None:
            os.kill(proc.pid, sig)
            proc.wait(10)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def planned_service(name: str, model: str, kind: str = "llm", **extra: object) -> PlannedService:
    return PlannedService(name=name, model=model, model_kind=kind, quant="Q4_K_M", engine="llama.cpp", mode="single",
                          devices=["gpu0"], **extra)  # fmt: skip


def make_plan(*services: PlannedService) -> Plan:
    device = PlannedDevice(id="gpu0", index=0, name="RTX 4090", catalog_id="rtx-4090", kind="gpu", memory_total_bytes=24 * 2**30,
                           memory_free_bytes=24 * 2**30, memory_planned_bytes=2**30)  # fmt: skip
    return Plan(feasible=True, devices=[device], services=list(services))
