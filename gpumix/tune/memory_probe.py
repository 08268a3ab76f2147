"""Ask llama.cpp what it allocates: start llama-server with `-lv 4`, wait until healthy, stop it with SIGINT and
read its `memory breakdown` table (gpumix.run.memlog). Used by the memory-truth tests and scripts/gpu-check.sh."""

from __future__ import annotations

import signal
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gpumix.errors import GpumixError
from gpumix.run.memlog import LlamaMemoryReport, MemoryRow, parse_llama_memory_breakdown
from gpumix.run.preflight import free_port
from gpumix.units import MiB

# Host-side buffer types whose bytes sit in the same RAM as the `Host` row. CPU_REPACK holds re-laid-out copies
# of weights that the (memory-mapped) Host model buffer also spans; see `LlamaMemoryProbe.cpu_mib`.
REPACK_ROW = "CPU_REPACK"


@dataclass(frozen=True)
class LlamaMemoryProbe:
    report: LlamaMemoryReport
    argv: tuple[str, ...]
    log_path: Path

    def device_row(self, name: str) -> MemoryRow:
        return self.report.row(name)

    def cpu_mib(self, mmap: bool = True) -> int:
        """model + context + compute of the host CPU. With mmap (llama-server's default) the Host model buffer is
        the mapped file range, which already holds the bytes of every tensor repacked into CPU_REPACK (a repacked
        block is the same size as the original: ggml-cpu/repack.h interleaves blocks, e.g. block_q4_Kx8 = 8 ×
        block_q4_K), so the repack copy is not counted twice; without mmap the two rows are disjoint."""
        host = self.report.row("Host")
        total = host.model_mib + host.context_mib + host.compute_mib
        if not mmap:
            total += sum(r.model_mib for r in self.report.rows if r.name == REPACK_ROW)
        return total

    @property
    def repack_mib(self) -> int:
        return sum(r.model_mib for r in self.report.rows if r.name == REPACK_ROW)


def probe_llama_server_memory(
    server: str | Path,
    model_path: str | Path,
    args: Sequence[str],
    log_path: Path,
    *,
    timeout_s: float = 180,
    threads: int = 1,
) -> LlamaMemoryProbe:
    """Run llama-server on `model_path` with `args` until /health answers, stop it, parse its memory tables."""
    port = free_port()
    argv = [str(server), "-m", str(model_path), "--host", "127.0.0.1", "--port", str(port), "-t", str(threads),
            "-lv", "4", *args]  # fmt: skip
    with log_path.open("w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait_healthy(proc, port, timeout_s, log_path)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    report = parse_llama_memory_breakdown(log_path.read_text(errors="replace"))
    if not report.rows:
        raise GpumixError(f"llama-server printed no memory breakdown (log: {log_path})", hint="is this build older?")
    return LlamaMemoryProbe(report, tuple(argv), log_path)


def _wait_healthy(proc: subprocess.Popen, port: int, timeout_s: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-1500:]
            raise GpumixError(f"llama-server exited early (exit {proc.returncode})", hint=tail)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise GpumixError(f"llama-server did not become healthy in {timeout_s:.0f} s", hint=f"log: {log_path}")


def mib(value_bytes: float) -> float:
    return value_bytes / MiB
