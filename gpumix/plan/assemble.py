"""The Plan's parts from the chosen options: PlannedService per service, PlannedDevice per device, costs."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from gpumix.estimate.calibration import Calibration
from gpumix.estimate.memory import sequences_held
from gpumix.estimate.speed import CPU_GB_PER_S_PER_THREAD, achieved_bandwidth_gb_per_s
from gpumix.hardware.spec import Device
from gpumix.kinds import SPLIT_MODES
from gpumix.models.spec import QuantSpec
from gpumix.plan.candidates import Option
from gpumix.plan.resolve import Resolved, endpoints_for
from gpumix.plan.result import Cost, PlannedDevice, PlannedService, Predicted
from gpumix.plan.score import slo_checks
from gpumix.plan.split import tensor_split_values

SECONDS_PER_MONTH = 30.44 * 86400  # average month (365.25 / 12 days)


def planned_service(svc: Resolved, opt: Option | None) -> PlannedService:
    base: dict[str, Any] = {
        "name": svc.entry.name, "model": svc.model.id, "model_path": svc.model_path, "model_kind": svc.model.kind,
        "quant": svc.quant.id, "engine": svc.engine, "context": svc.workload.context,
        "concurrency": svc.entry.concurrency, "replicas": svc.entry.replicas, "objective": svc.objective,
        "endpoints": endpoints_for(svc.model, svc.entry.task), "fallback": svc.entry.fallback,
        "kv_cache_dtype": svc.entry.kv_cache_dtype,
    }  # fmt: skip
    if opt is None:
        return PlannedService(**base, mode="single", devices=[], predicted=Predicted())
    engine = "vllm" if svc.model.kind == "llm" and opt.mode in ("tensor_parallel", "pipeline_parallel") else svc.engine
    hosts = opt.hosts
    return PlannedService(
        **{**base, "engine": engine, "replicas": len(opt.devices) if opt.mode == "replica" else svc.entry.replicas},
        mode=opt.mode,
        devices=[d.id for d in opt.devices],
        host=hosts.pop() if len(hosts) == 1 else None,
        memory_bytes=opt.memory_bytes,
        memory_breakdown=list(opt.memory),
        predicted=_predicted(opt),
        slo=slo_checks(svc, opt),
        memory_setting=opt.memory_setting,
        **_layer_fields(svc, opt, engine),
        **_kv_fields(svc, opt),
    )


def _kv_fields(svc: Resolved, opt: Option) -> dict[str, Any]:
    """kv_cache_tokens, max_full_context_sequences, kv_unified, and the replicas' shares, streams and KV."""
    if svc.model.kind != "llm" or not opt.kv_tokens:
        return {}
    context = svc.workload.context
    out: dict[str, Any] = {
        "kv_cache_tokens": sum(opt.kv_tokens),
        "max_full_context_sequences": sum(t // context for t in opt.kv_tokens),
        "kv_unified": opt.workloads[0].kv_unified if opt.workloads[0].engine == "llama.cpp" else None,
    }
    if opt.mode == "replica":
        total = sum(opt.streams) or 1
        out |= {"replica_shares": [round(n / total, 4) for n in opt.streams], "replica_concurrency": list(opt.streams),
                "replica_kv_cache_tokens": list(opt.kv_tokens)}  # fmt: skip
    return out


def _layer_fields(svc: Resolved, opt: Option, engine: str) -> dict[str, Any]:
    fields = _placement_fields(svc, opt)
    if engine == "vllm" and fields.get("threads") is None and all(d.kind == "cpu" for d in opt.devices):
        # OpenMP threads per CPU rank: every rank gets as many as the smallest CPU device has.
        fields["threads"] = svc.entry.threads or min((d.threads for d in opt.devices if d.threads), default=None)
    return fields


def _placement_fields(svc: Resolved, opt: Option) -> dict[str, Any]:
    """layers / split / tensor_split (-ts) / n_gpu_layers (-ngl) / threads (-t) of an LLM placement."""
    layers = list(opt.layers)
    if opt.mode in SPLIT_MODES and layers:
        total = sum(layers)
        split = [round(n / total, 4) for n in layers]
        if opt.mode == "cpu_offload":
            return {"layers": layers, "split": split, "tensor_split": tensor_split_values(layers[1:], output_on_gpu=False),
                    "n_gpu_layers": total - layers[0]}  # fmt: skip
        return {"layers": layers, "split": split, "tensor_split": tensor_split_values(layers), "n_gpu_layers": total + 1}
    on_cpu = all(d.kind == "cpu" for d in opt.devices)
    if svc.model.kind == "llm" and (opt.mode == "single" or (opt.mode == "replica" and on_cpu)):
        # Replicas on CPUs (a CPU-only fleet: one per host) get -t like a single CPU placement.
        threads = svc.entry.threads or min((d.threads for d in opt.devices if d.threads), default=None)
        return {"layers": layers, "n_gpu_layers": 0 if on_cpu else svc.model.n_layers + 1,
                "threads": threads if on_cpu else None}  # fmt: skip
    return {"layers": layers}


def _predicted(opt: Option) -> Predicted:
    est = opt.est if opt.decode else None  # LLM options carry the estimate and its 80 % ranges
    ranges: dict[str, float | None] = {}
    if est is not None:
        for name in ("decode_tokens_per_s", "aggregate_tokens_per_s", "prefill_tokens_per_s", "ttft_s"):
            for end in ("low", "high"):
                ranges[f"{name}_{end}"] = _r(getattr(est, f"{name}_{end}"), 4 if name == "ttft_s" else 2)
    return Predicted(
        decode_tokens_per_s=_r(opt.decode), aggregate_tokens_per_s=_r(opt.aggregate),
        prefill_tokens_per_s=_r(opt.prefill), ttft_s=_r(opt.ttft_s, 4),
        throughput=_r(opt.throughput), throughput_unit=opt.throughput_unit, **ranges,
        concurrency=sum(sequences_held(w) for w in opt.workloads) if opt.workloads else None,
    )  # fmt: skip


def _r(value: float | None, digits: int = 2) -> float | None:
    return None if value is None or math.isinf(value) or math.isnan(value) else round(value, digits)


def device_assumption(device: Device, calibration: Calibration | None) -> str | None:
    """`Device.assumed`, and for a CPU the RAM bandwidth decode reaches there (the speed model's own figure)."""
    if device.kind != "cpu" or calibration is None:
        return device.assumed
    theoretical = device.spec.mem_bandwidth_gb_per_s
    achieved = achieved_bandwidth_gb_per_s(device, QuantSpec(id="f16", bits_per_weight=16), calibration)
    measured = calibration.measurement_for(device) is not None
    fraction = calibration.backend("CPU").bandwidth_efficiency
    capped = (device.threads or 1) * CPU_GB_PER_S_PER_THREAD
    if measured:
        how = "measured by `gpumix tune`"
    elif capped < theoretical * fraction:
        how = (f"capped at {device.threads} threads x {CPU_GB_PER_S_PER_THREAD:g} GB/s per thread; the calibration's "
               f"CPU fraction {fraction:.3g} would give {theoretical * fraction:.1f}")  # fmt: skip
    else:
        how = f"the calibration's CPU fraction {fraction:.3g} of theoretical"
    text = f"{achieved:.1f} GB/s achieved for CPU decode ({how})"
    return f"{device.assumed}; {text}" if device.assumed else f"RAM {theoretical:.1f} GB/s theoretical; {text}"


def planned_devices(devs: Sequence[Device], services: Sequence[Resolved], chosen: Sequence[Option | None],
                    prices: Mapping[str, float], calibration: Calibration | None = None) -> list[PlannedDevice]:  # fmt: skip
    """Each device with the memory planned on it and how busy its services would keep it."""
    planned = {d.id: 0 for d in devs}
    bandwidth = {d.id: 0.0 for d in devs}
    compute = {d.id: 0.0 for d in devs}
    for svc, opt in zip(services, chosen, strict=True):
        if opt is None:
            continue
        load = svc.entry.load if svc.entry.load is not None else (1.0 if svc.model.kind == "llm" else 0.0)
        for d, mem, share in zip(opt.devices, opt.memory_bytes, opt.busy_shares(), strict=True):
            planned[d.id] += mem
            if svc.model.kind == "llm":
                bandwidth[d.id] += load * share
            else:
                compute[d.id] += load
    return [
        PlannedDevice(
            id=d.id, index=d.index, name=d.name, catalog_id=d.spec.id, kind=d.kind, host=d.host, uuid=d.uuid,
            memory_total_bytes=d.memory_total_bytes, memory_free_bytes=d.memory_free_bytes,
            memory_planned_bytes=planned[d.id], bandwidth_utilisation=round(min(bandwidth[d.id], 9.99), 3),
            compute_utilisation=round(min(compute[d.id], 9.99), 3), gbp_per_month=prices.get(d.id),
            assumed=device_assumption(d, calibration),
        )  # fmt: skip
        for d in devs
    ]


def service_costs(services: list[PlannedService], devices: list[PlannedDevice]) -> list[PlannedService]:
    """£ per million output tokens of each LLM service: its share (by planned memory) of its cards' monthly price."""
    by_id = {d.id: d for d in devices}
    out = []
    for svc in services:
        tokens = svc.predicted.aggregate_tokens_per_s
        monthly = 0.0
        for device_id, mem in zip(svc.devices, svc.memory_bytes, strict=False):
            dev = by_id[device_id]
            if dev.gbp_per_month and dev.memory_planned_bytes:
                monthly += dev.gbp_per_month * mem / dev.memory_planned_bytes
        if svc.model_kind == "llm" and tokens and monthly:
            svc = svc.model_copy(update={"gbp_per_million_tokens": round(monthly / (tokens * SECONDS_PER_MONTH / 1e6), 4)})
        out.append(svc)
    return out


def plan_cost(devices: list[PlannedDevice], services: list[PlannedService]) -> Cost:
    used = [d for d in devices if d.memory_planned_bytes > 0 and d.kind == "gpu"]
    # A total that silently leaves out an unpriced card would understate the cost: no total then (lint GPX016).
    priced = used and all(d.gbp_per_month is not None for d in used)
    monthly = sum(d.gbp_per_month or 0.0 for d in used) if priced else None
    tokens_per_s = sum(s.predicted.aggregate_tokens_per_s or 0.0 for s in services if s.model_kind == "llm")
    per_m = None
    if monthly and tokens_per_s > 0:
        per_m = monthly / (tokens_per_s * SECONDS_PER_MONTH / 1e6)  # at the planned throughput, busy all month
    return Cost(gbp_per_month=None if monthly is None else round(monthly, 2),
                gbp_per_million_tokens=None if per_m is None else round(per_m, 4))  # fmt: skip
