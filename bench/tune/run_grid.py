"""Benchmark: `gpumix tune` against a full -ts grid, the even and the memory-proportional split, in one session.

    .venv/bin/python bench/tune/run_grid.py                       # CPU test bed: fast 1.0 + slow 0.4 of a core
    .venv/bin/python bench/tune/run_grid.py --rpc A:P,B:Q         # existing RPC devices
    .venv/bin/python bench/tune/run_grid.py --devices CUDA0,RPC0 --rpc B:Q   # GPU + throttled RPC CPU device
    .venv/bin/python bench/tune/run_grid.py --devices CUDA0 --cpu-offload    # GPU + CPU partial offload (-ngl grid)

Writes bench/tune/results/<name>.json with every llama-bench result, the commands, load average and llama.cpp
build, and prints a markdown summary. Everything is measured in the same session so the ratios compare like with
like; `uptime` load before and after is recorded because the speeds are only as quiet as the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from gpumix.launch.llamacpp import require_llama_cpp
from gpumix.tune.bench import BenchRequest, run_llama_bench
from gpumix.tune.layout import read_layout
from gpumix.tune.session import BenchSettings, resolve_devices, resolve_model_file, tune_machine
from gpumix.tune.splits import Split, assign_layers
from gpumix.tune.testbed import testbed_down, testbed_up

HERE = Path(__file__).parent


def load() -> tuple[float, float, float]:
    return os.getloadavg()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--rpc", default="", help="host:port,... (default: start a test bed)")
    ap.add_argument("--devices", default="", help="-dev names in order (default: every RPC device)")
    ap.add_argument("--fast", type=float, default=1.0)
    ap.add_argument("--slow", type=float, default=0.4)
    ap.add_argument("--cpu-offload", action="store_true", help="one device + host CPU: grid over -ngl")
    ap.add_argument("--n-gen", type=int, default=64)
    ap.add_argument("-r", "--repetitions", type=int, default=3)
    ap.add_argument("--budget", type=int, default=4)
    ap.add_argument("--passes", type=int, default=2, help="measure grid + baselines this many times (median)")
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--name", default=None, help="results file name (default: testbed-<date>)")
    args = ap.parse_args()

    state = Path("/tmp") / f"gpumix-bench-testbed-{os.getpid()}.json"
    bed = None
    rpc = [a for a in args.rpc.split(",") if a]
    if not rpc and not args.devices:
        bed = testbed_up((("fast", args.fast), ("slow", args.slow)), path=state)
        rpc = [s.address for s in bed.servers]
    try:
        return run(args, rpc, bed)
    finally:
        if bed is not None:
            testbed_down(state)


def run(args: argparse.Namespace, rpc: list[str], bed) -> int:
    model = resolve_model_file(args.model)
    layout = read_layout(model)
    devices = resolve_devices([d for d in args.devices.split(",") if d], rpc)
    names = [d.name for d in devices]
    started, load_before = datetime.now(UTC).isoformat(timespec="seconds"), load()
    record: dict = {
        "started": started,
        "host": socket.gethostname(),
        "cpus": os.cpu_count(),
        "llama_cpp": require_llama_cpp().version,
        "model": str(model),
        "model_weight_bytes": layout.weight_bytes,
        "devices": [d.__dict__ for d in devices],
        "testbed": None if bed is None else [s.__dict__ for s in bed.servers],
        "settings": {"n_gen": args.n_gen, "repetitions": args.repetitions, "budget": args.budget, "ctx": args.ctx},
        "load_before": load_before,
        "command": " ".join(sys.argv),
    }

    # 1. gpumix tune
    print(f"tune on {names} (budget {args.budget}); load {load_before}", flush=True)
    t0 = time.monotonic()
    settings = BenchSettings(n_gen=args.n_gen, repetitions=args.repetitions, n_prompt_alone=0)
    result, _cal = tune_machine(
        str(model), rpc=rpc, budget=args.budget, context=args.ctx, settings=settings, resolved=devices,
        host_offload=args.cpu_offload,
        on_point=lambda p, n: print(f"  tune run {n}: {p.phase} {p.split} -> {p.tokens_per_s:.2f} t/s", flush=True),
    )  # fmt: skip
    record["tune"] = result.to_json() | {"wall_s": round(time.monotonic() - t0, 1)}

    # 2. the grid (and the baselines), measured with the same settings
    def measure(split: Split) -> dict:
        alone = len(split.order) == 1
        rpc_only = all(n.startswith("RPC") for n in names)
        req = BenchRequest(str(model), rpc=tuple(rpc), devices=tuple(names[i] for i in split.order),
                           tensor_split=() if alone else split.tensor_split, n_gpu_layers=split.n_gpu_layers,
                           n_gen=args.n_gen, repetitions=args.repetitions, threads=1 if rpc_only else None,
                           extra=("--poll", "0") if rpc_only else ())  # same client settings as gpumix tune
        r = run_llama_bench(req)[0]
        a = assign_layers(split, len(names), layout.n_layers)
        row = {"dev": "/".join(req.devices), "ts": "/".join(f"{v:g}" for v in split.tensor_split),
               "ngl": split.n_gpu_layers, "layers": list(a.layers),
               "output_device": None if a.output_device is None else names[a.output_device],
               "tokens_per_s": r.tokens_per_s, "stddev_tokens_per_s": r.stddev_tokens_per_s,
               "samples_tokens_per_s": list(r.samples_tokens_per_s), "command": list(r.command)}  # fmt: skip
        print(f"  {row['dev']} -ts {row['ts']} -ngl {row['ngl']}: layers {row['layers']} "
              f"out {row['output_device']} -> {r.tokens_per_s:.2f} ± {r.stddev_tokens_per_s:.2f} t/s", flush=True)  # fmt: skip
        return row

    order = tuple(range(len(names)))
    if args.cpu_offload:
        grid = [Split((0,), (1.0,), k) for k in range(0, layout.n_layers + 2, max(1, (layout.n_layers + 1) // 10))]
    else:
        if len(names) != 2:
            raise SystemExit("the -ts grid is defined for two devices")
        grid = [Split(order, (round(f / 10, 1), round(1 - f / 10, 1))) for f in range(10, -1, -1)]
    baselines = {"even": Split(order, (1.0,) * len(names))}
    if not args.cpu_offload:
        baselines["memory_proportional"] = Split(order, tuple(float(round(d.free_bytes / 2**20)) for d in devices))
    labelled = [("grid", s) for s in grid] + list(baselines.items()) + [("tune", result.best.split)]
    # Passes alternate direction so slow drift in the machine's load hits every point alike; per point the
    # median over passes is reported, every pass is kept.
    passes: list[list[dict]] = []
    for k in range(args.passes):
        print(f"pass {k + 1}/{args.passes}: grid, baselines, tune's choice", flush=True)
        seq = list(range(len(labelled)))
        seq = seq if k % 2 == 0 else seq[::-1]
        rows: list[dict] = [{}] * len(labelled)
        for i in seq:
            rows[i] = measure(labelled[i][1])
        passes.append(rows)
    merged = [_median_row([p[i] for p in passes]) for i in range(len(labelled))]
    record["passes"] = args.passes
    record["grid"] = merged[: len(grid)]
    record["baselines"] = {name: merged[len(grid) + j] for j, name in enumerate(baselines)}
    record["tune_choice_remeasured"] = merged[-1]
    record["load_after"] = load()
    record["finished"] = datetime.now(UTC).isoformat(timespec="seconds")

    summary = summarize(record)
    record["summary"] = summary
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    name = args.name or f"testbed-{started[:16].replace(':', '')}"
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(markdown(record))
    print(f"raw results: {path}")
    return 0


def _median_row(rows: list[dict]) -> dict:
    values = sorted(r["tokens_per_s"] for r in rows)
    mid = len(values) // 2
    median = values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2
    return rows[0] | {"tokens_per_s": median, "per_pass_tokens_per_s": [r["tokens_per_s"] for r in rows],
                      "stddev_tokens_per_s": max(r["stddev_tokens_per_s"] for r in rows)}  # fmt: skip


def summarize(record: dict) -> dict:
    grid_best = max(record["grid"], key=lambda r: r["tokens_per_s"])
    tune_best = record["tune"]["best"]
    again = record["tune_choice_remeasured"]
    even = record["baselines"]["even"]["tokens_per_s"]
    return {
        "grid_best": {k: grid_best[k] for k in ("dev", "ts", "layers", "output_device", "tokens_per_s")},
        "grid_runs": len(record["grid"]),
        # The robust comparison on a noisy machine: does tune load the same thing as the grid's fastest point?
        "tune_choice_is_grid_best_assignment": (again["layers"], again["output_device"])
        == (grid_best["layers"], grid_best["output_device"]),
        "tune_runs": record["tune"]["runs"],
        "tune_best_tokens_per_s_in_tune": tune_best["tokens_per_s"],
        "tune_best_tokens_per_s_remeasured": again["tokens_per_s"],
        "tune_vs_grid_best": round(again["tokens_per_s"] / grid_best["tokens_per_s"], 4),
        "tune_vs_even": round(again["tokens_per_s"] / even, 4),
        "tune_vs_memory_proportional": round(
            again["tokens_per_s"] / record["baselines"].get("memory_proportional", record["baselines"]["even"])["tokens_per_s"], 4
        ),
    }


def markdown(record: dict) -> str:
    s = record["summary"]
    lines = [
        f"model {Path(record['model']).name}, devices {[d['name'] for d in record['devices']]}, "
        f"-n {record['settings']['n_gen']} -r {record['settings']['repetitions']}, median of {record['passes']} passes, load {record['load_before']} → "
        f"{record['load_after']}",
        "",
        "| split | -dev | -ts | -ngl | layers | output on | t/s | ± |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in record["grid"]:
        lines.append(f"| grid | {r['dev']} | {r['ts']} | {r['ngl']} | {r['layers']} | {r['output_device']} | "
                     f"{r['tokens_per_s']:.2f} | {r['stddev_tokens_per_s']:.2f} |")  # fmt: skip
    for k, r in record["baselines"].items():
        lines.append(f"| {k} | {r['dev']} | {r['ts']} | {r['ngl']} | {r['layers']} | {r['output_device']} | "
                     f"{r['tokens_per_s']:.2f} | {r['stddev_tokens_per_s']:.2f} |")  # fmt: skip
    r = record["tune_choice_remeasured"]
    lines.append(f"| **tune's choice** (re-measured) | {r['dev']} | {r['ts']} | {r['ngl']} | {r['layers']} | "
                 f"{r['output_device']} | {r['tokens_per_s']:.2f} | {r['stddev_tokens_per_s']:.2f} |")  # fmt: skip
    lines += [
        "",
        f"- runs: tune {s['tune_runs']} llama-bench runs, grid {s['grid_runs']}",
        f"- tune's choice loads the same layers/output placement as the grid's best: "
        f"{s['tune_choice_is_grid_best_assignment']}",
        f"- tune's choice / grid best: {s['tune_vs_grid_best']:.3f} (grid best {s['grid_best']['dev']} -ts "
        f"{s['grid_best']['ts']} = {s['grid_best']['tokens_per_s']:.2f} t/s)",
        f"- tune's choice / even split: {s['tune_vs_even']:.2f}x; / memory-proportional: "
        f"{s['tune_vs_memory_proportional']:.2f}x",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
