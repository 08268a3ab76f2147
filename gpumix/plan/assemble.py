"""The Plan's parts from the chosen options: PlannedService per service, PlannedDevice per device, costs."""

from __future__ import annotations

import math
from collections.abc import Sequence

from gpumix.hardware.spec import Device
from gpumix.plan.candidates import Option, device_shares
from gpumix.plan.fleet import dkey
from gpumix.plan.resolve import Resolved, endpoints_for
from gpumix.plan.result import Cost, PlannedDevice, PlannedService, Predicted
from gpumix.plan.score import slo_checks

SECONDS_PER_MONTH = 30.44 * 86400  # average month (365.25 / 12 days)


def planned_service(svc: Resolved, opt: Option | None) -> PlannedService:
    from gpumix.plan.split import tensor_split_values

    base = {
        "name": svc.entry.name, "model": svc.model.id, "model_path": svc.model_path, "model_kind": svc.model.kind,
        "quant": svc.quant.id, "engine": svc.engine, "context": svc.workload.context,
        "concurrency": svc.entry.concurrency, "replicas": svc.entry.replicas, "objective": svc.objective,
        "endpoints": endpoints_for(svc.model, svc.entry.task), "fallback": svc.entry.fallback,
        "kv_cache_dtype": svc.entry.kv_cache_dtype,
    }  # fmt: skip
    if opt is None:
        return PlannedService(**base, mode="single", devices=[], predicted=Predicted())
    engine = svc.engine
    if svc.model.kind == "llm" and opt.mode in ("tensor_parallel", "pipeline_parallel"):
        engine = "vllm"
    layers: list[int] = list(opt.layers)
    split: list[float] = []
    ts: list[float] = []
    n_gpu_layers = None
    threads = None
    if opt.mode in ("layer_split", "pipeline_parallel", "cpu_offload") and layers:
        total = sum(layers)
        split = [round(n / total, 4) for n in layers]
        if opt.mode == "cpu_offload":
            ts = tensor_split_values(layers[1:], output_on_gpu=False)
            n_gpu_layers = total - layers[0]
        else:
            ts = tensor_split_values(layers)
            n_gpu_layers = total + 1
    elif svc.model.kind == "llm" and opt.mode == "single":
        n_gpu_layers = 0 if opt.devices[0].kind == "cpu" else svc.model.n_layers + 1
        if opt.devices[0].kind == "cpu":
            threads = svc.entry.threads or opt.devices[0].threads
    predicted = Predicted(
        decode_tokens_per_s=_r(opt.decode), aggregate_tokens_per_s=_r(opt.aggregate),
        prefill_tokens_per_s=_r(opt.prefill), ttft_s=_r(opt.ttft_s, 4),
        throughput=_r(opt.throughput), throughput_unit=opt.throughput_unit,
    )  # fmt: skip
    hosts = {d.host for d in opt.devices}
    return PlannedService(
        **{**base, "engine": engine, "replicas": len(opt.devices) if opt.mode == "replica" else svc.entry.replicas},
        mode=opt.mode,
        devices=[d.index for d in opt.devices],
        host=hosts.pop() if len(hosts) == 1 else None,
        split=split,
        layers=layers,
        tensor_split=ts,
        memory_bytes=opt.memory_bytes,
        memory_breakdown=list(opt.memory),
        n_gpu_layers=n_gpu_layers,
        threads=threads,
        predicted=predicted,
        slo=slo_checks(svc, opt),
    )


def _r(value: float | None, digits: int = 2) -> float | None:
    return None if value is None or math.isinf(value) or math.isnan(value) else round(value, digits)


def planned_devices(devs: Sequence[Device], services: list[Resolved], chosen: list[Option | None],
                     prices: dict[tuple, float]) -> list[PlannedDevice]:  # fmt: skip
    index_of = {dkey(d): i for i, d in enumerate(devs)}
    planned: dict[int, int] = {i: 0 for i in range(len(devs))}
    bw: dict[int, float] = {i: 0.0 for i in range(len(devs))}
    compute: dict[int, float] = {i: 0.0 for i in range(len(devs))}
    for svc, opt in zip(services, chosen, strict=True):
        if opt is None:
            continue
        load = svc.entry.load if svc.entry.load is not None else (1.0 if svc.model.kind == "llm" else 0.0)
        for d, mem, share in zip(opt.devices, opt.memory_bytes, device_shares(opt), strict=True):
            i = index_of[dkey(d)]
            planned[i] += mem
            if svc.model.kind == "llm":
                bw[i] += load * share
            else:
                compute[i] += load
    return [
        PlannedDevice(
            index=d.index, name=d.name, catalog_id=d.spec.id, kind=d.kind, host=d.host, uuid=d.uuid,
            memory_total_bytes=d.memory_total_bytes, memory_free_bytes=d.memory_free_bytes,
            memory_planned_bytes=planned[i], bandwidth_utilisation=round(min(bw[i], 9.99), 3),
            compute_utilisation=round(min(compute[i], 9.99), 3), gbp_per_month=prices.get(dkey(d)),
        )  # fmt: skip
        for i, d in enumerate(devs)
    ]


def service_costs(services: list[PlannedService], devices: list[PlannedDevice]) -> list[PlannedService]:
    """£ per million output tokens of each LLM service: its share (by planned memory) of its cards' monthly price."""
    by_key = {(d.host, d.index): d for d in devices}
    out = []
    for svc in services:
        tokens = svc.predicted.aggregate_tokens_per_s
        monthly = 0.0
        for index, mem in zip(svc.devices, svc.memory_bytes, strict=False):
            dev = by_key.get((svc.host, index))
            if dev is not None and dev.gbp_per_month and dev.memory_planned_bytes:
                monthly += dev.gbp_per_month * mem / dev.memory_planned_bytes
        if svc.model_kind == "llm" and tokens and monthly:
            svc = svc.model_copy(update={"gbp_per_million_tokens": round(monthly / (tokens * SECONDS_PER_MONTH / 1e6), 4)})
        out.append(svc)
    return out


def plan_cost(devices: list[PlannedDevice], services: list[PlannedService], resolved: list[Resolved]) -> Cost:
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
