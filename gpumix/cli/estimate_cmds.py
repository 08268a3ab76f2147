"""`gpumix estimate` and `gpumix validate`: thin wrappers over gpumix.estimate and gpumix.calibrate.validate."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, cast

import typer
from rich.table import Table
from rich.text import Text

from gpumix.calibrate.validate import ValidationReport, validate_file
from gpumix.cli.calibration_option import CALIBRATION_HELP, cli_calibration
from gpumix.cli.output import add_row, esc, say, show, styled
from gpumix.cli.params import choice
from gpumix.errors import GpumixError
from gpumix.estimate import Calibration, Estimate, Placement, Workload, estimate
from gpumix.estimate.memory import fits_on, service_memory, service_memory_parts, usable_bytes
from gpumix.hardware.catalog import parse_device_list
from gpumix.hardware.devices import device_from_spec
from gpumix.hardware.discovery import read_this_machine
from gpumix.hardware.entries import load_devices_file, this_machine_cpu_device
from gpumix.hardware.spec import Device
from gpumix.kinds import LLM_ENGINES, Engine, PlacementMode
from gpumix.models.catalog import load_model, resolve_quant
from gpumix.models.spec import ModelSpec, QuantSpec
from gpumix.plan.result import Plan
from gpumix.units import GiB


def _devices(gpus: list[str], cpu: bool, devices_file: Path | None = None) -> list[Device]:
    if devices_file is not None:
        if gpus or cpu:
            raise GpumixError("give --devices-file or --gpu/--cpu, not both")
        return _file_devices(devices_file)
    specs = [spec for name in gpus for spec in parse_device_list(name)]
    devices = [device_from_spec(spec, index=i) for i, spec in enumerate(specs)]
    if cpu:
        devices.insert(0, this_machine_cpu_device(read_this_machine))  # llama.cpp keeps the first layers on the CPU when offloading
    if not devices:
        raise GpumixError("no device given", hint='add --gpu "RTX 3090" (repeatable) and/or --cpu')
    return devices


def _file_devices(path: Path) -> list[Device]:
    """The devices of a devices file (one host); a CPU, if any, goes first (llama.cpp offloads the first layers)."""
    devices = load_devices_file(path, read_this_machine)
    if len({d.host for d in devices}) > 1:
        raise GpumixError(f"{path}: devices on several hosts; `gpumix estimate` places one model on one machine",
                          hint="keep one host's devices in the file, or use `gpumix plan` for a fleet")  # fmt: skip
    return sorted(devices, key=lambda d: d.kind != "cpu")


def _parse_tensor_split(text: str | None, n: int) -> list[float] | None:
    if not text:
        return None
    try:
        values = [float(v) for v in text.replace("/", ",").split(",")]
    except ValueError as exc:
        raise GpumixError(f"--tensor-split '{text}' is not a list of numbers", hint="e.g. --tensor-split 3,1") from exc
    if len(values) != n or any(v < 0 for v in values) or sum(values) <= 0:
        raise GpumixError(f"--tensor-split needs {n} non-negative values, one per device (got '{text}')")
    return values


def _placement(
    model: ModelSpec, quant: QuantSpec, devices: list[Device], workload: Workload, split: str,
    tensor_split: list[float] | None, calibration: Calibration,
) -> tuple[Placement, str]:  # fmt: skip
    from gpumix.plan.split import best_layer_split, layers_from_tensor_split

    if len(devices) == 1 or split == "none":
        return Placement(mode="single", devices=(devices[0],)), "single device"
    if split in ("row", "tensor"):
        return Placement(mode="tensor_parallel", devices=tuple(devices)), f"{split} split (tensor parallel)"
    has_cpu = any(d.kind == "cpu" for d in devices)
    mode: PlacementMode = "cpu_offload" if has_cpu else "layer_split"
    if tensor_split is not None:
        layers = layers_from_tensor_split(tensor_split, model.n_layers)
        return Placement(mode=mode, devices=tuple(devices), layers=layers), "your --tensor-split"
    layers = best_layer_split(model, quant, devices, workload, "latency", calibration=calibration)
    return Placement(mode=mode, devices=tuple(devices), layers=layers), "gpumix's best split for one stream"


def _estimate_json(model: ModelSpec, quant: QuantSpec, result: Estimate, how: str, workload: Workload) -> dict[str, Any]:
    return {
        "model": model.id,
        "quant": quant.id,
        "context": workload.context,
        "parallel": workload.parallel,
        "mode": result.mode,
        "split_source": how,
        "fits": result.fits,
        "devices": [
            {
                "name": d.name,
                "index": d.device_index,
                "layers": d.layers,
                "memory_bytes": d.memory_bytes,
                "memory_free_bytes": d.memory_free_bytes,
                "memory_usable_bytes": d.memory_usable_bytes,
                "fits": d.fits,
                "shortfall_bytes": d.shortfall_bytes,
                "breakdown": d.memory.model_dump(),
            }
            for d in result.devices
        ],
        "predicted": {
            "decode_tokens_per_s": result.decode_tokens_per_s,
            "aggregate_tokens_per_s": result.aggregate_tokens_per_s,
            "prefill_tokens_per_s": result.prefill_tokens_per_s,
            "ttft_s": result.ttft_s,
            "bandwidth_bound_tokens_per_s": result.bandwidth_bound_tokens_per_s,
            **{f"{name}_{end}": getattr(result, f"{name}_{end}")
               for name in ("decode_tokens_per_s", "aggregate_tokens_per_s", "prefill_tokens_per_s", "ttft_s")
               for end in ("low", "high")},
        },
        "notes": list(result.notes),
    }


def _print_estimate(model: ModelSpec, quant: QuantSpec, result: Estimate, how: str, workload: Workload) -> None:
    say(
        f"[bold]{esc(model.name)}[/] {esc(quant.id)} · ctx {workload.context} × {workload.parallel} seq · "
        f"{result.mode} ({esc(how)})"
    )
    table = Table(show_lines=False)
    for col in ("device", "layers", "weights", "KV cache", "compute", "overhead", "total", "free", "usable", "fits"):
        table.add_column(col, justify="right" if col not in ("device", "fits") else "left")
    for d in result.devices:
        m = d.memory
        fit = styled("yes", "green") if d.fits else styled(f"no, short {d.shortfall_bytes / GiB:.2f} GiB", "red")
        add_row(
            table, f"{d.device_index}: {d.name}", str(d.layers),
            *(f"{v / GiB:.2f}" for v in (m.weights_bytes, m.kv_cache_bytes, m.compute_bytes, m.overhead_bytes)),
            f"{d.memory_bytes / GiB:.2f}", f"{d.memory_free_bytes / GiB:.2f}", f"{d.memory_usable_bytes / GiB:.2f}", fit,
        )  # fmt: skip
    show(table)
    say("memory in GiB (2^30 bytes); usable = free − margin (1 GiB on a GPU), the test `gpumix plan` applies")
    verdict = "[green]fits[/]" if result.fits else "[red]does not fit[/]"
    say(
        f"{verdict} · decode {result.decode_tokens_per_s:.1f} tok/s{_range(result, 'decode_tokens_per_s', 1)} "
        f"(one stream; bandwidth bound {result.bandwidth_bound_tokens_per_s:.1f}) · aggregate "
        f"{result.aggregate_tokens_per_s:.1f} tok/s{_range(result, 'aggregate_tokens_per_s', 1)} · prefill "
        f"{result.prefill_tokens_per_s:.0f} tok/s{_range(result, 'prefill_tokens_per_s', 0)} · TTFT "
        f"{result.ttft_s * 1000:.0f} ms{_range(result, 'ttft_s', 0, 1000)} ({workload.prompt_tokens}-token prompt)"
    )
    if result.decode_tokens_per_s_low is not None:
        say("[dim]ranges: 80 % intervals from leave-GPUs-out residuals of the calibration (gpumix validate)[/]")
    for note in result.notes:
        say(Text(f"  note: {note}"))


def _range(result: Estimate, name: str, digits: int, scale: float = 1.0) -> str:
    """' [low–high]' for one of the estimate's speeds, or '' when it has no range."""
    low, high = getattr(result, f"{name}_low"), getattr(result, f"{name}_high")
    if low is None or high is None:
        return ""
    return f" [{low * scale:.{digits}f}–{high * scale:.{digits}f}]"


def estimate_cmd(
    model: str = typer.Option(..., "--model", "-m", help="Catalog id/alias, a .gguf path or a config.json."),
    gpu: list[str] = typer.Option([], "--gpu", "-g", help='A GPU ("RTX 3090", "2x RTX 4090"); repeatable.'),
    cpu: bool = typer.Option(False, "--cpu", help="Add this machine's CPU and RAM as a device."),
    devices_file: Path | None = typer.Option(None, "--devices-file", help="Devices from a YAML file (the plan file's `devices:` schema) instead of --gpu/--cpu."),
    quant: str | None = typer.Option(None, "--quant", "-q", help="Weight format (read from the file for a GGUF)."),
    ctx: int = typer.Option(4096, "--ctx", "-c", min=1, help="Context tokens per sequence."),
    parallel: int = typer.Option(1, "--parallel", "-np", min=1, help="Sequences held in KV at once."),
    split: str = typer.Option("layer", "--split", help="layer | row | tensor | none"),
    tensor_split: str | None = typer.Option(None, "--tensor-split", "-ts", help="Shares per device, e.g. 3,1."),
    engine: str = typer.Option("llama.cpp", "--engine", help="llama.cpp | vllm"),
    kv_type: str = typer.Option("f16", "--cache-type", help="KV cache type (f16, q8_0, fp8...)."),
    prompt: int = typer.Option(512, "--prompt", min=1, help="Prompt tokens for prefill and TTFT."),
    calibration: Path | None = typer.Option(None, "--calibration", help=CALIBRATION_HELP),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    suggest: bool = typer.Option(True, "--advice/--no-advice",
                                 help="When it does not fit: re-plan smaller quants, CPU offload and cards that fix it."),
) -> None:
    """Memory per device, fit, and predicted decode/prefill speed and TTFT for a model on GPUs."""
    split = choice(split, ("layer", "row", "tensor", "none"), "--split")
    engine_name = choice(engine, LLM_ENGINES, "--engine")
    spec = load_model(model)
    if spec.kind != "llm":  # image, audio, embeddings, rerankers: their engine's memory, part by part
        _service_estimate(spec, _devices(gpu, cpu, devices_file), as_json)
        return
    if quant is None:
        if spec.file_quant is None:
            raise GpumixError("--quant is required for a catalog model", hint="e.g. --quant q4_k_m (see `gpumix quants`)")
        quant = spec.file_quant
    qspec = resolve_quant(quant)
    devices = _devices(gpu, cpu, devices_file)
    workload = Workload(
        context=ctx, parallel=parallel, engine=engine_name, kv_cache_dtype=kv_type, prompt_tokens=prompt,
    )  # fmt: skip
    cal = cli_calibration(calibration).calibration
    ts = _parse_tensor_split(tensor_split, len(devices))
    try:
        placement, how = _placement(spec, qspec, devices, workload, split, ts, cal)
    except GpumixError as exc:  # no split holds it at all: say so, and what would
        if not suggest:
            raise
        _no_split(exc, _advice_plan(model, qspec, engine_name, workload, devices, cal), as_json)
        raise typer.Exit(1) from None
    result = estimate(spec, qspec, placement, workload, calibration=cal)
    plan = None if result.fits or not suggest else _advice_plan(model, qspec, engine_name, workload, devices, cal)
    if as_json:
        data = _estimate_json(spec, qspec, result, how, workload)
        if plan is not None:
            data["suggestions"] = [s.model_dump() for s in plan.suggestions]
        print(json.dumps(data, indent=2))
    else:
        _print_estimate(spec, qspec, result, how, workload)
        for device in devices:
            if device.assumed:
                say(Text(f"  {device.id} assumed: {device.assumed}"))
        if plan is not None:
            _print_advice(plan)
    if not result.fits:
        raise typer.Exit(1)


def _service_estimate(model: ModelSpec, devices: list[Device], as_json: bool) -> None:
    """A side service runs whole on one device: its memory on each given device, and the sourced parts it adds up."""
    rows = [(d, service_memory(model, d.kind == "gpu")) for d in devices]
    parts = service_memory_parts(model, any(d.kind == "gpu" for d in devices))
    assert model.service_memory is not None  # service_memory_parts raised otherwise
    setting = model.service_memory.setting
    if as_json:
        print(json.dumps({
            "model": model.id, "kind": model.kind, "engine": model.service_memory.engine, "setting": setting,
            "fits": any(fits_on(d, m.total_bytes) for d, m in rows),
            "devices": [{"name": d.name, "index": d.index, "memory_bytes": m.total_bytes,
                         "memory_usable_bytes": usable_bytes(d), "fits": fits_on(d, m.total_bytes),
                         "breakdown": m.model_dump()} for d, m in rows],
            "parts": [p._asdict() for p in parts],
            "low_memory": _low_memory_json(model, devices),
        }, indent=2))  # fmt: skip
    else:
        say(f"[bold]{esc(model.name)}[/] ({model.kind}) on {esc(model.service_memory.engine)} · {esc(setting)}")
        table = Table(show_lines=False)
        for col in ("device", "weights", "KV cache", "compute", "overhead", "total", "usable", "fits"):
            table.add_column(col, justify="left" if col in ("device", "fits") else "right")
        for d, m in rows:
            short = m.total_bytes - usable_bytes(d)
            fit = styled("yes", "green") if short <= 0 else styled(f"no, short {short / GiB:.2f} GiB", "red")
            add_row(table, f"{d.index}: {d.name}",
                    *(f"{v / GiB:.2f}" for v in (m.weights_bytes, m.kv_cache_bytes, m.compute_bytes, m.overhead_bytes,
                                                 m.total_bytes, usable_bytes(d))), fit)  # fmt: skip
        show(table)
        say("memory in GiB (2^30 bytes); usable = free − margin (1 GiB on a GPU). The parts (on a GPU), with sources:")
        for p in parts:
            say(Text(f"  {p.kind:8} {p.size_bytes / 1e9:7.3f} GB  {p.name} — {p.source}"))
        low = _low_memory_json(model, devices)
        if low is not None:
            sizes = ", ".join(f"{d['name']} {d['memory_bytes'] / GiB:.2f} GiB ({'fits' if d['fits'] else 'does not fit'})"
                              for d in low["devices"])  # fmt: skip
            say(Text(f"low-memory setting (plan files: `memory: low`, or `auto` when the default does not fit): "
                     f"{low['setting']}: {sizes}. {low['speed_note']}"))  # fmt: skip
    if not any(fits_on(d, m.total_bytes) for d, m in rows):
        raise typer.Exit(1)


def _low_memory_json(model: ModelSpec, devices: list[Device]) -> dict[str, Any] | None:
    """The model's low-memory engine setting (models.yaml `low_memory`) on each device, or None without one."""
    low = model.service_memory.low_memory if model.service_memory is not None else None
    if low is None:
        return None
    rows = [(d, service_memory(model, d.kind == "gpu", "low").total_bytes) for d in devices]
    return {"setting": low.setting, "args": list(low.args), "speed_note": low.speed_note,
            "devices": [{"name": d.name, "index": d.index, "memory_bytes": m, "fits": fits_on(d, m)} for d, m in rows]}


def _advice_plan(model: str, quant: QuantSpec, engine: str, workload: Workload, devices: list[Device],
                 calibration: Calibration) -> Plan:  # fmt: skip
    """The planner's plan for this one model on these devices: its `suggestions` (gpumix.plan.advice) say what would
    make it fit, each change re-planned."""
    from gpumix.plan.planner import plan_services
    from gpumix.plan.spec import PlanSpec, ServiceEntry

    kv = None if workload.kv_cache_dtype == "f16" else workload.kv_cache_dtype
    service = ServiceEntry(name=_service_name(model), model=model, quant=quant.id, engine=cast(Engine, engine),
                           context=workload.context, concurrency=workload.parallel, kv_cache_dtype=kv)  # fmt: skip
    return plan_services(PlanSpec(services=[service]), calibration=calibration, devices=devices)


def _service_name(model: str) -> str:
    """A plan service name (lower-case slug) for the model the estimate was asked about."""
    slug = re.sub(r"[^a-z0-9_.-]+", "-", Path(model).stem.lower() if model.endswith((".gguf", ".json")) else model.lower())
    return slug.strip("-._")[:63] or "model"


def _no_split(exc: GpumixError, plan: Plan, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"fits": False, "error": exc.message, "reasons": plan.reasons,
                          "suggestions": [s.model_dump() for s in plan.suggestions]}, indent=2))  # fmt: skip
        return
    say(Text(f"does not fit: {exc.message}", style="red"))
    for reason in plan.reasons:
        say(Text(f"  {reason}"))
    _print_advice(plan)


def _print_advice(plan: Plan) -> None:
    from gpumix.cli.plan_cmds import print_suggestions

    if plan.feasible:  # the planner found a placement the estimate's split/mode did not try
        placed = plan.services[0]
        say(Text(f"gpumix plan would place it: {placed.mode} on {', '.join(placed.devices)} "
                 f"({', '.join(map(str, placed.layers))} layers) → {placed.predicted.decode_tokens_per_s} tok/s"))  # fmt: skip
    elif plan.suggestions:
        print_suggestions(plan.suggestions)
    else:
        say("no change gpumix tries makes it fit: " + esc("; ".join(plan.reasons)))


def validate_cmd(
    csv_file: Path = typer.Argument(..., help="measurements.csv or multigpu.csv format."),
    calibration: Path | None = typer.Option(None, "--calibration", help=CALIBRATION_HELP),
    headline: bool = typer.Option(False, "--headline", help="Only dense tg128-tg1024 and pp512 rows."),
    show_rows: bool = typer.Option(False, "--rows", help="Print every row's prediction."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Predict every row of a measurement CSV and report the mean absolute percentage error."""
    report = validate_file(csv_file, cli_calibration(calibration).calibration, headline_only=headline)
    if as_json:
        print(report.model_dump_json(indent=2))
        return
    _print_report(report, show_rows)


def _print_report(report: ValidationReport, show_rows: bool) -> None:
    if show_rows:
        table = Table(title=Text(report.file))
        for col in ("line", "gpu", "model", "quant", "test", "era", "measured", "predicted", "80 % range", "error"):
            table.add_column(col)
        for r in report.results:
            band = "-" if r.predicted_low is None or r.predicted_high is None else (
                f"{r.predicted_low:.1f}–{r.predicted_high:.1f}" + ("" if r.inside else " ✗"))  # fmt: skip
            add_row(table, str(r.line), r.gpu, r.model, r.quant, r.test, r.era or "undated", f"{r.measured:.1f}",
                    f"{r.predicted:.1f}", band, f"{r.error:+.1%}" + (" (caution: not scored)" if r.caution else ""))  # fmt: skip
        show(table)
    say(Text(f"{report.file} ({report.format}-GPU format): {report.rows} rows, {report.used} used, "
             f"{report.skipped} skipped"))  # fmt: skip
    for reason, count in sorted(report.skipped_reasons.items(), key=lambda kv: -kv[1]):
        say(Text(f"  skipped {count}: {reason}"))
    for name, metric in (("decode", report.decode), ("prefill", report.prefill)):
        value = "n/a" if metric.mape is None else f"{metric.mape:.1%}"
        head = report.headline[name]
        head_value = "n/a" if head.mape is None else f"{head.mape:.1%}"
        say(f"{name}: n={metric.n} MAPE {value}  (dense tg128-tg1024 / pp512: n={head.n} MAPE {head_value})")
    if report.interval_coverage is not None:
        say(f"measured inside the 80 % interval: {report.interval_coverage:.1%} of scored rows (near 80 % on GPUs "
            "the calibration was not fitted on; above it on the rows it was fitted on)")
    if report.caution_rows:
        say(Text(f"{report.caution_rows} rows flagged 'treat with caution' in their notes: listed with --rows, "
                 "not scored (and not fitted)"))


def register(app: typer.Typer) -> None:
    app.command("estimate")(estimate_cmd)
    app.command("validate")(validate_cmd)
