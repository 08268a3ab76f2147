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
from gpumix.netutil import free_port
from gpumix.run.memlog import LlamaMemoryReport, parse_llama_memory_breakdown

# llama-server's option for loading without mmap (`-lm none`, `--load-mode none`; llama.cpp 0c1e570 replaced
# --no-mmap with it). See LlamaMemoryProbe.cpu_mib for why the CPU checks use it.
NO_MMAP_ARGS = ("--load-mode", "none")


@dataclass(frozen=True)
class LlamaMemoryProbe:
    report: LlamaMemoryReport
    argv: tuple[str, ...]
    log_path: Path
    mmap: bool

    @property
    def cpu_mib(self) -> float:
        """What llama.cpp allocated in host RAM: model + context + compute of every host row, plus the output buffer
        (logits), which llama.cpp allocates but leaves out of its table.

        Only meaningful without mmap: then the rows are disjoint allocations (Host: the tensors read into RAM;
        CPU_REPACK: the tensors re-laid for the CPU kernels). With mmap the Host model row is the mapped file range
        [first, last tensor] of the non-repacked tensors, which spans repacked tensors lying between them (their
        pages are touched once to copy them and are then reclaimable page cache) and misses those at the ends, so
        it double-counts or under-counts depending on the tensor order in the file."""
        if self.mmap:
            raise ValueError("cpu_mib needs a probe run without mmap (probe_llama_server_memory(..., mmap=False))")
        return self.report.host_self_mib + self.report.output_buffer_mib

    def device_mib(self, name: str) -> float:
        row = self.report.row(name)
        return row.model_mib + row.context_mib + row.compute_mib

    @property
    def repack_mib(self) -> int:
        return sum(r.model_mib for r in self.report.rows if r.name == "CPU_REPACK")


def probe_llama_server_memory(
    server: str | Path,
    model_path: str | Path,
    args: Sequence[str],
    log_path: Path,
    *,
    timeout_s: float = 180,
    threads: int = 1,
    mmap: bool = True,
) -> LlamaMemoryProbe:
    """Run llama-server on `model_path` with `args` until /health answers, stop it, parse its memory tables."""
    port = free_port()
    argv = [str(server), "-m", str(model_path), "--host", "127.0.0.1", "--port", str(port), "-t", str(threads),
            "-lv", "4", *(() if mmap else NO_MMAP_ARGS), *args]  # fmt: skip
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
    return LlamaMemoryProbe(report, tuple(argv), log_path, mmap)


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
