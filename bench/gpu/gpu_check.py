"""One-shot device check (run by scripts/gpu-check.sh): synthesise catalog models that fit the device, measure
llama-bench decode/prefill and llama-server memory, and write

  OUT/measurements.csv   the calibration format of ../shared/calibration/measurements.csv (same columns)
  OUT/memory.csv         llama.cpp's model + context + compute per device vs gpumix's estimate
  OUT/validate.txt/.json `gpumix validate OUT/measurements.csv` (predicted vs measured)
  OUT/logs/              every llama-bench / llama-server command's output

`--backend cuda` (default when NVML finds a GPU) offloads everything (-ngl 99) to GPU 0; `--backend cpu` runs the
same steps on this machine's CPU with tiny models, so the script itself can be tested where no GPU is lent.
Synthetic models have random weights: speed and memory depend on shapes, not values (gpumix.models.synth).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from gpumix.errors import GpumixError
from gpumix.estimate import Placement, Workload, estimate
from gpumix.hardware.devices import DEFAULT_CPU_BANDWIDTH_ROW
from gpumix.hardware.discovery import this_machine_cpu
from gpumix.hardware.spec import Device
from gpumix.launch.llamacpp import require_llama_cpp
from gpumix.models.catalog import load_model, resolve_model, resolve_quant
from gpumix.tune.bench import BenchError, BenchRequest, run_llama_bench
from gpumix.tune.memory_probe import probe_llama_server_memory
from gpumix.tune.synth import expected_file_bytes, synth_cache_dir, synthesize
from gpumix.units import GB, GiB, MiB

COLUMNS = ("source", "gpu", "backend", "model", "quant", "model_size_gb", "params_b", "test", "tokens_per_s", "notes")
# Candidates smallest first; the check takes the largest few whose weights fill at most FILL of the device memory
# and whose synthesis fits the disk (an F16 intermediate is written before quantising).
GPU_CANDIDATES = [("qwen2.5-0.5b", "q4_k_m"), ("llama-3.2-3b", "q4_k_m"), ("llama-3.1-8b", "q4_k_m"),
                  ("llama-3.1-8b", "q8_0"), ("qwen2.5-14b", "q4_k_m"), ("qwen2.5-32b", "q4_k_m"),
                  ("llama-3.3-70b", "q4_k_m")]  # fmt: skip
CPU_CANDIDATES = [("smollm2-135m", "q4_k_m"), ("qwen2.5-0.5b", "q4_k_m"), ("granite-3.0-1b-a400m", "q4_k_m")]
FILL = 0.8
DISK_RESERVE_BYTES = 4 * GB


@dataclass(frozen=True)
class Target:
    backend: str  # "CUDA" | "CPU"
    device: Device  # for the estimator
    catalog_name: str  # what the CSV's gpu column says (resolves in the GPU catalog)
    memory_bytes: int
    ngl: int
    threads: int | None


def detect_target(backend: str, threads: int | None) -> Target:
    if backend == "cpu":
        # One thread unless asked: `gpumix validate` predicts a catalog CPU row as one thread, and on a shared
        # machine a second thread measures the other load more than the CPU.
        cpu = this_machine_cpu(threads=threads or 1)
        return Target("CPU", cpu, DEFAULT_CPU_BANDWIDTH_ROW, cpu.memory_free_bytes, 0, cpu.threads)
    from gpumix.hardware.discovery import discover_machine

    machine = discover_machine()
    if not machine.gpus:
        raise GpumixError("NVML finds no GPU", hint="run with --cpu to test the script on this machine's CPU")
    gpu = machine.gpus[0]
    name = gpu.device.spec.name if gpu.catalog_id else gpu.nvml_name
    return Target("CUDA", gpu.device, name, gpu.device.memory_free_bytes, 99, threads)


def pick_models(target: Target, limit: int, only: list[str]) -> list[tuple[str, str]]:
    candidates = [tuple(x.split(":", 1)) for x in only] if only else (CPU_CANDIDATES if target.backend == "CPU" else GPU_CANDIDATES)
    disk_free = _disk_free(synth_cache_dir())
    fitting = []
    for model_id, quant in candidates:
        spec, q = resolve_model(model_id), resolve_quant(quant)
        weights = expected_file_bytes(spec, q)
        f16 = spec.params_total * 2
        if weights <= FILL * target.memory_bytes and weights + f16 + DISK_RESERVE_BYTES <= disk_free:
            fitting.append((model_id, quant))
    return fitting if only else fitting[-limit:]


def _disk_free(folder: Path) -> int:
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    return shutil.disk_usage(folder).free


def bench(target: Target, path: Path, n_prompt: int, n_gen: int, reps: int, log_dir: Path) -> list[dict]:
    rows = []
    for kind, (p, n) in (("prefill", (n_prompt, 0)), ("decode", (0, n_gen))):
        req = BenchRequest(model_path=str(path), n_gpu_layers=target.ngl, n_prompt=p, n_gen=n, repetitions=reps,
                           threads=target.threads, flash_attn=1 if target.backend == "CUDA" else None)  # fmt: skip
        try:
            [result] = run_llama_bench(req, timeout_s=900)
        except BenchError as exc:
            print(f"  {kind}: FAILED {exc.message}", flush=True)
            continue
        (log_dir / f"{path.stem}-{result.test}.json").write_text(json.dumps(result.__dict__, default=str, indent=2))
        rows.append({"test": result.test, "tokens_per_s": result.tokens_per_s, "stddev": result.stddev_tokens_per_s,
                     "size": result.model_size_bytes, "params": result.model_n_params, "argv": result.command})  # fmt: skip
        print(f"  {result.test}: {result.tokens_per_s:.2f} t/s (± {result.stddev_tokens_per_s:.2f})", flush=True)
    return rows


def memory_check(target: Target, path: Path, context: int, log_dir: Path) -> dict:
    server = require_llama_cpp().binary("llama-server")
    args = ["-c", str(context), "-np", "1", "-ngl", str(target.ngl)]
    # Without mmap on the CPU: llama.cpp's host rows are then disjoint allocations (LlamaMemoryProbe.cpu_mib).
    probe = probe_llama_server_memory(server, path, args, log_dir / f"{path.stem}-server-c{context}.log",
                                      timeout_s=600, threads=target.threads or 1, mmap=target.backend != "CPU")  # fmt: skip
    model = load_model(path)
    workload = Workload(context=context, parallel=1, kv_unified=False)
    device = target.device
    result = estimate(model, resolve_quant(model.file_quant), Placement(mode="single", devices=(device,)), workload)
    mem = result.devices[0].memory
    predicted = (mem.weights_bytes + mem.kv_cache_bytes + mem.compute_bytes) / MiB
    if target.backend == "CPU":
        measured = probe.cpu_mib
        row_name = "host rows + output buffer"
    else:
        row_name = next(r for r in probe.report.rows if r.is_device).name
        measured = probe.device_mib(row_name)
    return {"device_row": row_name, "context": context, "measured_mib": round(measured, 2), "predicted_mib": round(predicted, 1),
            "predicted_weights_mib": round(mem.weights_bytes / MiB, 1), "predicted_kv_mib": round(mem.kv_cache_bytes / MiB, 1),
            "predicted_compute_mib": round(mem.compute_bytes / MiB, 1),
            "error_pct": round(100 * (predicted - measured) / measured, 2) if measured else None}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--models", nargs="*", default=[], help="id:quant pairs instead of the automatic pick")
    parser.add_argument("--max-models", type=int, default=4)
    parser.add_argument("-p", "--n-prompt", type=int, default=512)
    parser.add_argument("-n", "--n-gen", type=int, default=128)
    parser.add_argument("-r", "--repetitions", type=int, default=3)
    parser.add_argument("--context", type=int, default=4096, help="llama-server -c for the memory check")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    backend = args.backend
    if backend == "auto":
        backend = "cuda" if Path("/proc/driver/nvidia/version").exists() else "cpu"
    target = detect_target(backend, args.threads)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or Path("bench/gpu/results") / f"{target.backend.lower()}-{stamp}"
    log_dir = out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    install = require_llama_cpp()
    models = pick_models(target, args.max_models, args.models)
    if not models:
        raise GpumixError(f"no candidate model fits {target.catalog_name} ({target.memory_bytes / GiB:.1f} GiB)")
    print(f"device: {target.catalog_name} ({target.backend}, {target.memory_bytes / GiB:.1f} GiB free); "
          f"llama.cpp {install.version}; models: {', '.join(f'{m} {q}' for m, q in models)}", flush=True)  # fmt: skip

    rows, memory = [], []
    source = f"gpumix gpu-check {stamp} on {platform.node()}"
    for model_id, quant in models:
        started = time.monotonic()
        synth = synthesize(model_id, quant)
        print(f"{model_id} {quant}: {synth.path} ({synth.size_bytes / GB:.2f} GB, "
              f"{'cached' if synth.cached else f'synthesised in {time.monotonic() - started:.0f} s'})", flush=True)  # fmt: skip
        spec = resolve_model(model_id)
        notes_common = (f"synthetic weights (gpumix synth, random values, exact shapes); llama.cpp build {install.version}; "
                        f"llama-bench -ngl {target.ngl}{' -fa 1' if target.backend == 'CUDA' else ''} n_batch=2048 "
                        f"n_ubatch=512; threads={target.threads or 'default'}; r={args.repetitions}")  # fmt: skip
        for r in bench(target, synth.path, args.n_prompt, args.n_gen, args.repetitions, log_dir):
            rows.append({"source": source, "gpu": target.catalog_name, "backend": target.backend, "model": spec.name,
                         "quant": quant.upper(), "model_size_gb": f"{r['size'] / GB:.3f}",
                         "params_b": f"{r['params'] / 1e9:.3f}", "test": r["test"], "tokens_per_s": f"{r['tokens_per_s']:.2f}",
                         "notes": f"size={r['size'] / GiB:.2f} GiB; {notes_common}; stdev={r['stddev']:.2f}"})  # fmt: skip
        try:
            mem = memory_check(target, synth.path, args.context, log_dir)
        except GpumixError as exc:
            print(f"  memory: FAILED {exc.message}", flush=True)
        else:
            memory.append({"model": model_id, "quant": quant, **mem})
            print(f"  memory ({mem['device_row']}, -c {args.context}): llama.cpp {mem['measured_mib']} MiB, "
                  f"gpumix {mem['predicted_mib']} MiB ({mem['error_pct']:+.1f}%)", flush=True)  # fmt: skip

    csv_path = out / "measurements.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    if memory:
        with (out / "memory.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(memory[0]))
            writer.writeheader()
            writer.writerows(memory)
    gpumix = Path(sys.executable).with_name("gpumix")
    for fmt, name in (([], "validate.txt"), (["--json"], "validate.json")):
        report = subprocess.run([str(gpumix), "validate", str(csv_path), "--rows", *fmt], capture_output=True,
                                text=True, env=os.environ | {"COLUMNS": "200"})  # fmt: skip
        (out / name).write_text(report.stdout + report.stderr)
    print((out / "validate.txt").read_text())
    print(f"wrote {csv_path}, {out / 'memory.csv'}, {out / 'validate.txt'}", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except GpumixError as exc:
        print(f"error: {exc.message}" + (f"\n  hint: {exc.hint}" if exc.hint else ""), file=sys.stderr)
        sys.exit(2)
