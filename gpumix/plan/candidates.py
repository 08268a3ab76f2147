"""Placement options ("candidates") per service: an LLM on one card, a llama.cpp layer split (speed-aware split
from `split.solve_layer_split`), CPU offload, vLLM tensor / pipeline parallel, replicas; other services one card
each. Each option is estimated (`gpumix.estimate.estimate`).

KV budgets (`kvmath`): an LLM on vLLM or llama.cpp with a unified KV holds one KV pool per engine process. Each
placement is offered at KV levels, from every stream at full context down to one full context (`llm_variants`), so
that the assignment weighs an LLM's streams against what goes beside it; after the assignment the planner divides
the pools' room on their cards again (`gpumix.plan.kv`). Replicas share the service's streams
(`kvmath.replica_streams`).

Hosts: a service may go to any host. Single cards, TP, and splits sit within one host; replicas may spread over
hosts (each replica is its own process). A split may cross hosts only where the plan file says how: llama.cpp
layer split over the network with `allow_rpc: true`, vLLM pipeline parallel over Ray with `allow_multinode: true`.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from gpumix.errors import GpumixError
from gpumix.estimate import estimate
from gpumix.estimate.calibration import Calibration
from gpumix.estimate.estimator import combine_replicas
from gpumix.estimate.memory import has_low_memory_setting, kv_tokens_held, service_memory, shares_kv_pool, usable_bytes
from gpumix.estimate.speed import achieved_flops
from gpumix.estimate.types import Estimate, Links, MemoryBreakdown, Placement, Workload
from gpumix.hardware.spec import Device
from gpumix.kinds import SPLIT_MODES, MemorySetting, Objective, PlacementMode
from gpumix.models.spec import ModelSpec, QuantSpec
from gpumix.plan import kvmath
from gpumix.plan import split as splitmod
from gpumix.plan.fleet import DeviceClass, device_class, links_for
from gpumix.plan.resolve import Resolved
from gpumix.plan.spec import PlanSpec, ServiceEntry

MAX_GROUP = 4  # largest device group tried for one model (splits/TP/PP), per host
SMALL_HOST_GPUS = 5  # up to this many GPUs every subset is a candidate group; above, one group per mix of card types
ALL_REPLICA_SETS_UP_TO = 6  # GPUs; above, only the fastest and the slowest n cards are tried as n replicas

Cache = dict[Any, Any]  # estimates, splits and links of one planning run, keyed by what they depend on


@dataclass
class Option:
    """One way to place one service: a mode on a device group, with its estimate and its cost for the solver."""

    service: int
    mode: PlacementMode
    devices: tuple[Device, ...]
    layers: tuple[int, ...] = ()
    est: Estimate | None = None
    memory: tuple[MemoryBreakdown, ...] = ()
    decode: float | None = None
    aggregate: float | None = None
    prefill: float | None = None
    ttft_s: float | None = None
    throughput: float | None = None
    throughput_unit: str | None = None
    speed: float = 0.0  # the objective's speed
    cost: float = 0.0
    notes: list[str] = field(default_factory=list)
    # LLMs, per engine process (one per replica, else one): the streams it serves, its workload as estimated, the
    # tokens of KV its `memory` holds, and the most it may hold (streams × context).
    streams: tuple[int, ...] = ()
    workloads: tuple[Workload, ...] = ()
    kv_tokens: tuple[int, ...] = ()
    kv_max_tokens: tuple[int, ...] = ()
    # Shared KV pools (vLLM, llama.cpp unified): the memory with every pool at its least (one full context,
    # `kv_least_tokens`) and at its most; the planner re-divides the pools' room after the assignment
    # (gpumix.plan.kv). Empty without a pool that can grow.
    kv_least_tokens: tuple[int, ...] = ()
    memory_least: tuple[MemoryBreakdown, ...] = ()
    memory_full: tuple[MemoryBreakdown, ...] = ()
    # Image services: the engine setting this option's memory is for (sd-server defaults or its low-memory setting).
    memory_setting: MemorySetting | None = None

    @functools.cached_property
    def memory_bytes(self) -> list[int]:
        return [m.total_bytes for m in self.memory]

    @functools.cached_property
    def _fits(self) -> bool:
        return all(mem <= usable_bytes(dev) for dev, mem in zip(self.devices, self.memory_bytes, strict=True))

    def fits(self) -> bool:
        """Memory on every device ≤ free − margin (gpumix.estimate.memory.usable_bytes)."""
        return self._fits

    @property
    def hosts(self) -> set[str | None]:
        return {d.host for d in self.devices}

    def process_positions(self) -> list[tuple[int, ...]]:
        """Positions in `devices` of each engine process: one per replica, else one process on all of them."""
        if self.mode == "replica":
            return [(i,) for i in range(len(self.devices))]
        return [tuple(range(len(self.devices)))]

    def busy_shares(self) -> list[float]:
        """Share of the service's time each device is busy: a layer split's token visits devices in turn."""
        if self.est is None or self.mode not in SPLIT_MODES:
            return [1.0] * len(self.devices)
        times = [d.decode_s_per_token for d in self.est.devices]
        total = sum(times) or 1.0
        return [t / total for t in times]


@dataclass
class CandidateContext:
    """What every candidate of one planning run shares: the plan file, sockets, calibration, and a cache of
    estimates and links (identical cards of a fleet share them)."""

    spec: PlanSpec
    sockets: Mapping[str, int | None]
    calibration: Calibration
    per_class: int | None = None  # large fleets: one-card candidates per identical card type per host
    cache: Cache = field(default_factory=dict)

    def links(self, group: Sequence[Device]) -> Links:
        key = ("links", tuple(device_class(d) + (d.index, d.host is None) for d in group),
               tuple(self.sockets.get(d.id) for d in group), len({d.host for d in group}))  # fmt: skip
        if key not in self.cache:
            self.cache[key] = links_for(self.spec, group, self.sockets)
        return cast(Links, self.cache[key])


def _speed_rank(device: Device) -> float:
    return device.spec.mem_bandwidth_gb_per_s


def _model_key(svc: Resolved) -> tuple[str, str | None, str]:
    return (svc.model.id, svc.model.path, svc.quant.id)


def service_pool(entry: ServiceEntry, devices: Sequence[Device]) -> list[Device]:
    """The devices a service may use: all, or those its `host:` / `devices:` pin it to."""
    pool = [d for d in devices if entry.host is None or d.host == entry.host]
    if entry.devices is None:
        return pool
    return [d for d in pool if any(d.id == p if isinstance(p, str) else d.index == p for p in entry.devices)]


def by_host(devices: Sequence[Device]) -> dict[str | None, list[Device]]:
    hosts: dict[str | None, list[Device]] = {}
    for d in devices:
        hosts.setdefault(d.host, []).append(d)
    return hosts


def engine_workload(svc: Resolved, mode: PlacementMode) -> Workload:
    """The service's workload on the engine that runs this mode (tensor / pipeline parallel run on vLLM)."""
    workload = svc.workload
    if mode in ("tensor_parallel", "pipeline_parallel") or (mode in ("single", "replica") and svc.engine == "vllm"):
        workload = workload.model_copy(update={"engine": "vllm"})
    return workload


def llm_option(svc: Resolved, mode: PlacementMode, group: Sequence[Device], layers: tuple[int, ...], links: Links,
               calibration: Calibration, cache: Cache | None = None, kv_tokens: Sequence[int] | None = None,
               streams: Sequence[int] | None = None) -> Option:  # fmt: skip
    """One LLM placement, estimated. Raises GpumixError when the estimator cannot place it that way.

    `streams`: the concurrency of each engine process (replicas: one each; default the service's concurrency, every
    replica all of it). `kv_tokens`: each process's KV budget (default every stream at full context)."""
    base = engine_workload(svc, mode)
    n_proc = len(group) if mode == "replica" else 1
    streams = tuple(streams) if streams is not None else (svc.entry.concurrency,) * n_proc
    pooled = shares_kv_pool(base)
    workloads = tuple(
        base.model_copy(update={"parallel": n, "kv_tokens": kv_tokens[p] if kv_tokens is not None and pooled else None})
        for p, n in enumerate(streams)
    )  # fmt: skip
    if mode == "replica":
        est = combine_replicas([_estimate(svc, "single", (d,), (), w, links, calibration, cache)
                                for d, w in zip(group, workloads, strict=True)])  # fmt: skip
    else:
        est = _estimate(svc, mode, tuple(group), layers, workloads[0], links, calibration, cache)
    opt = Option(
        service=svc.index, mode=mode, devices=tuple(group), layers=layers, est=est,
        memory=tuple(d.memory for d in est.devices),
        decode=est.decode_tokens_per_s, aggregate=est.aggregate_tokens_per_s,
        prefill=est.prefill_tokens_per_s, ttft_s=est.ttft_s, streams=streams, workloads=workloads,
        kv_tokens=tuple(kv_tokens_held(w) for w in workloads),
        kv_max_tokens=tuple(kvmath.max_kv_tokens(w, n) if pooled else kv_tokens_held(w)
                            for w, n in zip(workloads, streams, strict=True)),
    )  # fmt: skip
    opt.speed = (opt.decode if svc.objective == "latency" else opt.aggregate) or 0.0
    return opt


def _estimate(svc: Resolved, mode: PlacementMode, group: tuple[Device, ...], layers: tuple[int, ...],
              workload: Workload, links: Links, calibration: Calibration, cache: Cache | None) -> Estimate:  # fmt: skip
    est_mode = "layer_split" if mode == "cpu_offload" else mode
    key = ("est", _model_key(svc), workload, est_mode, tuple(device_class(d) for d in group), layers, links)
    est = None if cache is None else cache.get(key)
    if est is None:
        est = estimate(svc.model, svc.quant, Placement(mode=est_mode, devices=group, layers=layers), workload, links,
                       calibration)  # fmt: skip
        if cache is not None:
            cache[key] = est
    return est


def llm_variants(svc: Resolved, mode: PlacementMode, group: Sequence[Device], layers: tuple[int, ...], links: Links,
                 calibration: Calibration, cache: Cache | None = None) -> list[Option]:  # fmt: skip
    """A placement as the solver sees it: without a shared KV pool (llama.cpp `kv_unified: false`) one option holding
    every stream's KV. With one, the same placement at KV levels — every stream at full context, then half, a
    quarter, ... of them, down to one full context (always offered, fitting or not) — each level that fits its cards
    alone. The solver picks a level (scoring charges the streams a level cannot hold, `score.KV_SHORT_PENALTY`);
    after the assignment the pool grows into what its cards have left (`gpumix.plan.kv`)."""
    streams = _replica_streams(svc, group, links, calibration, cache) if mode == "replica" else None
    full = llm_option(svc, mode, group, layers, links, calibration, cache, streams=streams)
    if not shares_kv_pool(engine_workload(svc, mode)):
        return [full]
    least = tuple(kvmath.min_kv_tokens(w) for w in full.workloads)
    if least == full.kv_max_tokens:
        return [full]
    levels = [llm_option(svc, mode, group, layers, links, calibration, cache, kv_tokens=tokens, streams=full.streams)
              for tokens in _kv_levels(full, least)]  # fmt: skip
    return [dataclasses.replace(opt, kv_least_tokens=least, memory_least=levels[-1].memory, memory_full=full.memory)
            for opt in [full, *levels] if opt.fits() or opt is levels[-1]]  # fmt: skip


def _kv_levels(full: Option, least: tuple[int, ...]) -> list[tuple[int, ...]]:
    """KV budgets per process for half, a quarter, ... of each process's streams at full context, ending with
    `least` (one full context each)."""
    levels: list[tuple[int, ...]] = []
    share = 0.5
    while True:
        tokens = tuple(max(low, min(high, math.ceil(share * n) * w.context))
                       for low, high, n, w in zip(least, full.kv_max_tokens, full.streams, full.workloads, strict=True))  # fmt: skip
        if tokens not in levels and tokens != full.kv_max_tokens:
            levels.append(tokens)
        if tokens == least:
            return levels
        share /= 2


def streams_held(opt: Option) -> int:
    """Streams the option's KV holds at full context (its processes' streams without a budget)."""
    return sum(min(n, t // w.context) for n, t, w in zip(opt.streams, opt.kv_tokens, opt.workloads, strict=True))


def kv_bytes_per_token(opt: Option, process: int) -> dict[str, float]:
    """Bytes one more token of KV budget costs on each device of one process with a shared pool: the slope between
    `memory_least` and `memory_full` (device id → bytes per token)."""
    span = opt.kv_max_tokens[process] - opt.kv_least_tokens[process] if opt.memory_least else 0
    if span <= 0:
        return {}  # no pool, or one that cannot grow (a replica of one stream: one full context is its most)
    full, least = [m.total_bytes for m in opt.memory_full], [m.total_bytes for m in opt.memory_least]
    return {opt.devices[i].id: max(full[i] - least[i], 0) / span for i in opt.process_positions()[process]}


def _replica_streams(svc: Resolved, group: Sequence[Device], links: Links, calibration: Calibration,
                     cache: Cache | None) -> tuple[int, ...]:  # fmt: skip
    """Each replica's share of the service's streams (`kvmath.replica_streams`), from one-card estimates at one
    stream and at all of them, and what each card's KV holds alone."""
    concurrency = svc.entry.concurrency
    base = engine_workload(svc, "replica")
    pooled = shares_kv_pool(base)
    one_s, all_s, capacity = [], [], []
    for d in group:
        one = _estimate(svc, "single", (d,), (), base.model_copy(update={"parallel": 1}), links, calibration, cache)
        every = _estimate(svc, "single", (d,), (), base.model_copy(update={"parallel": concurrency}), links,
                          calibration, cache)  # fmt: skip
        one_s.append(1.0 / one.aggregate_tokens_per_s)
        all_s.append(concurrency / every.aggregate_tokens_per_s)
        room = usable_bytes(d) - one.devices[0].memory_bytes
        per_seq = (every.devices[0].memory_bytes - one.devices[0].memory_bytes) / max(concurrency - 1, 1)
        if not pooled:
            capacity.append(concurrency)  # each slot holds its own context: the slot count is what it serves
        else:
            capacity.append(concurrency if per_seq <= 0 else 1 + max(int(room // per_seq), 0))
    return tuple(kvmath.replica_streams(concurrency, one_s, all_s, capacity))


class _Options:
    """The options of one LLM service, without duplicates; estimates that fail are left out."""

    def __init__(self, svc: Resolved, ctx: CandidateContext) -> None:
        self.svc, self.ctx = svc, ctx
        self.items: list[Option] = []
        self._seen: set[tuple[object, ...]] = set()

    def add(self, mode: PlacementMode, group: Sequence[Device], layers: tuple[int, ...] = ()) -> None:
        key = (mode, tuple(d.id for d in group), layers)
        if key in self._seen:
            return
        self._seen.add(key)
        try:
            self.items.extend(llm_variants(self.svc, mode, group, layers, self.ctx.links(group),
                                           self.ctx.calibration, self.ctx.cache))  # fmt: skip
        except GpumixError:
            return

    def splits(self, group: Sequence[Device], objective: Objective, vllm: bool = False,
               min_layers: int = 0) -> list[tuple[int, ...]]:  # fmt: skip
        """The best layer split holding every stream's KV, and (with a shared KV pool) the best holding one full
        context — it may put more layers on the fast card."""
        svc, ctx = self.svc, self.ctx
        workload = svc.workload.model_copy(update={"engine": "vllm"}) if vllm else svc.workload
        workloads = [workload]
        if shares_kv_pool(workload):
            workloads.append(workload.model_copy(update={"kv_tokens": kvmath.min_kv_tokens(workload)}))
        links = ctx.links(group)
        found: list[tuple[int, ...]] = []
        for w in workloads:
            key = ("split", _model_key(svc), w, objective, tuple(device_class(d) for d in group), links, min_layers)
            if key not in ctx.cache:
                ctx.cache[key] = splitmod.solve_layer_split(svc.model, svc.quant, group, w, objective, links,
                                                            ctx.calibration, min_layers_per_device=min_layers)  # fmt: skip
            if ctx.cache[key] is not None and ctx.cache[key] not in found:
                found.append(ctx.cache[key])
        return found


def llm_options(svc: Resolved, devices: Sequence[Device], ctx: CandidateContext) -> list[Option]:
    """Every placement worth estimating for one LLM service: within each host, then across hosts where the plan
    allows it, then replicas on any host."""
    pool = service_pool(svc.entry, devices)
    hosts = by_host(pool)
    options = _Options(svc, ctx)
    for host_devices in hosts.values():
        _host_options(options, host_devices)
    if len(hosts) > 1:
        _cross_host_options(options, pool)
        _replicas(options, _gpus(pool))
        if svc.engine == "llama.cpp" and svc.entry.replicas > 1:
            _replicas(options, _cpus(pool))  # a CPU-only fleet: one replica per host's CPU
    return options.items


def _gpus(devices: Sequence[Device]) -> list[Device]:
    return sorted((d for d in devices if d.kind == "gpu"), key=_speed_rank, reverse=True)


def _cpus(devices: Sequence[Device]) -> list[Device]:
    return sorted((d for d in devices if d.kind == "cpu"), key=_speed_rank, reverse=True)


def _host_options(options: _Options, host_devices: Sequence[Device]) -> None:
    """Single card, layer split, CPU offload, tensor and pipeline parallel on the devices of one host."""
    svc, want = options.svc, options.svc.entry.mode
    gpus = _gpus(host_devices)
    cpus = [d for d in host_devices if d.kind == "cpu"]
    if want in ("auto", "single") and svc.entry.replicas == 1:
        for d in _limit_per_class(gpus, options.ctx.per_class):
            options.add("single", [d])
        if svc.engine in ("llama.cpp", "vllm"):
            for d in cpus:
                options.add("single", [d])  # all layers in RAM: the only choice without GPUs, a slow one beside them
    groups = _distinct_groups(gpus)
    if svc.engine == "llama.cpp":
        _layer_splits(options, groups)
        _cpu_offloads(options, groups, cpus)
    if svc.engine == "vllm":
        # vLLM's CPU build runs one rank per CPU device (a NUMA node, or a core range the plan file names), so on a
        # host without GPUs its TP/PP groups are made of CPU devices.
        rank_groups = groups if gpus else _distinct_groups(cpus)
        _tensor_parallel(options, rank_groups)
        _pipeline_parallel(options, rank_groups)
    _replicas(options, gpus)


def _cross_host_options(options: _Options, pool: Sequence[Device]) -> None:
    """Splits whose devices sit on several hosts, where the plan says how to run them."""
    svc = options.svc
    spans = _spans_hosts
    if svc.engine == "llama.cpp" and svc.entry.allow_rpc:
        groups = [g for g in _distinct_groups(_gpus(pool)) if spans(g)]
        _layer_splits(options, groups)
        cpus = [d for d in pool if d.kind == "cpu"]
        _cpu_offloads(options, _distinct_groups(_gpus(pool)), cpus, only=spans)
    if svc.engine == "vllm" and svc.entry.allow_multinode:
        _pipeline_parallel(options, [g for g in _distinct_groups(_gpus(pool)) if spans(g)])


def _spans_hosts(group: Sequence[Device]) -> bool:
    return len({d.host for d in group}) > 1


def _layer_splits(options: _Options, groups: list[list[Device]]) -> None:
    svc, want = options.svc, options.svc.entry.mode
    if want not in ("auto", "layer_split"):
        return
    fits_alone = {device_class(o.devices[0]) for o in options.items if o.mode == "single" and o.fits()
                  and o.kv_tokens == o.kv_max_tokens}  # fmt: skip
    for group in groups:
        if len(group) < 2 or (want == "auto" and device_class(group[0]) in fits_alone):
            continue  # a split is slower than the group's fastest card when the model fits it
        for layers in options.splits(group, svc.objective, min_layers=1 if want == "layer_split" else 0):
            if all(layers):
                options.add("layer_split", group, layers)


def _cpu_offloads(options: _Options, groups: list[list[Device]], cpus: list[Device],
                  only: Callable[[list[Device]], bool] | None = None) -> None:  # fmt: skip
    if options.svc.entry.mode not in ("auto", "cpu_offload") or not cpus:
        return
    for group in [g for g in groups if len(g) <= 2]:
        offload = [cpus[0], *group]
        if only is not None and not only(offload):
            continue
        for layers in options.splits(offload, "latency"):
            if layers[0] > 0:
                options.add("cpu_offload", offload, layers)


def _tensor_parallel(options: _Options, groups: list[list[Device]]) -> None:
    want = options.svc.entry.mode
    if want not in ("auto", "tensor_parallel"):
        return
    for group in groups:
        identical = len({d.spec.id for d in group}) == 1
        if len(group) in (2, 4, 8) and (identical or want == "tensor_parallel"):
            options.add("tensor_parallel", group)


def _pipeline_parallel(options: _Options, groups: list[list[Device]]) -> None:
    if options.svc.entry.mode not in ("auto", "pipeline_parallel"):
        return
    for group in groups:
        if len(group) >= 2:
            for layers in options.splits(group, "throughput", vllm=True, min_layers=1):
                if all(layers):
                    options.add("pipeline_parallel", group, layers)


def _replicas(options: _Options, gpus: list[Device]) -> None:
    """n copies of the model, one per card of `gpus` (one host's, or all hosts': each replica is its own process).
    n = the service's `replicas`; with the throughput objective 2; with `mode: replica` and no count, every card."""
    entry, svc = options.svc.entry, options.svc
    if entry.mode not in ("auto", "replica"):
        return
    n = entry.replicas if entry.replicas > 1 else (2 if svc.objective == "throughput" else 0)
    if entry.mode == "replica" and n == 0:
        n = len(gpus)
    if n >= 2 and len(gpus) >= n:
        for group in _replica_groups(gpus, n):
            options.add("replica", group)


def _limit_per_class(devices: list[Device], per_class: int | None) -> list[Device]:
    """Large fleets: a few of each identical card per host are enough candidates (the rest are equivalent)."""
    if per_class is None:
        return devices
    taken: dict[DeviceClass, int] = {}
    out = []
    for d in devices:
        key = device_class(d)
        if taken.get(key, 0) < per_class:
            taken[key] = taken.get(key, 0) + 1
            out.append(d)
    return out


def _distinct_groups(gpus: list[Device]) -> list[list[Device]]:
    """Device groups (fastest first) worth trying: every subset of size ≤ MAX_GROUP of a few GPUs; of many, one
    group per mix of card types (identical cards are interchangeable)."""
    groups: list[list[Device]] = []
    if len(gpus) <= SMALL_HOST_GPUS:
        for size in range(1, min(len(gpus), MAX_GROUP) + 1):
            groups.extend(list(g) for g in itertools.combinations(gpus, size))
        return groups
    by_type: dict[tuple[str, int], list[Device]] = {}
    for d in gpus:
        by_type.setdefault((d.spec.id, d.memory_free_bytes), []).append(d)
    kinds = list(by_type.values())
    for size in range(1, MAX_GROUP + 1):
        for combo in itertools.combinations_with_replacement(range(len(kinds)), size):
            counts = {k: combo.count(k) for k in set(combo)}
            if all(len(kinds[k]) >= c for k, c in counts.items()):
                group = [d for k, c in counts.items() for d in kinds[k][:c]]
                groups.append(sorted(group, key=_speed_rank, reverse=True))
    return groups


def _replica_groups(gpus: list[Device], n: int) -> list[list[Device]]:
    if len(gpus) <= ALL_REPLICA_SETS_UP_TO:
        return [list(g) for g in itertools.combinations(gpus, n)]
    return [gpus[:n], gpus[-n:]]


def service_options(svc: Resolved, devices: Sequence[Device], ctx: CandidateContext) -> list[Option]:
    """Non-LLM services (image, audio, embeddings, rerankers): one card each (any host), speed ∝ its FLOP/s.
    Image services with a low-memory setting are offered in it too (`memory_settings`); its speed is the default's
    prediction (the slowdown is not measured: models.yaml `speed_note`), and scoring prefers the default."""
    options = []
    for d in service_pool(svc.entry, devices):
        if d.kind == "cpu" and svc.model.kind == "image":
            continue  # diffusion on a CPU is minutes per image: not a placement anyone wants
        key = ("speed", svc.model.id, device_class(d))
        if key not in ctx.cache:
            ctx.cache[key] = service_speed(svc.model, d, ctx.calibration)
        throughput = ctx.cache[key]
        for setting in memory_settings(svc):
            memory = service_memory(svc.model, d.kind == "gpu", setting or "default")
            opt = Option(service=svc.index, mode="single", devices=(d,), memory=(memory,), throughput=throughput,
                         throughput_unit=svc.model.speed_unit, memory_setting=setting)  # fmt: skip
            opt.speed = throughput or 0.0
            options.append(opt)
    return options


def memory_settings(svc: Resolved) -> list[MemorySetting | None]:
    """The engine settings an image service is offered in: what its `memory:` asks for; under `auto` the default
    and, where the catalog has one, the low-memory setting. None for services without the choice."""
    if svc.model.kind != "image":
        return [None]
    if svc.entry.memory != "auto":
        return [svc.entry.memory]
    return ["default", "low"] if has_low_memory_setting(svc.model) else ["default"]


def service_speed(model: ModelSpec, device: Device, calibration: Calibration) -> float | None:
    """The catalog's reference speed scaled by achieved FP16 FLOP/s (these services are compute-bound)."""
    from gpumix.hardware.catalog import resolve_gpu
    from gpumix.hardware.devices import device_from_spec

    if not model.reference_speed or not model.reference_gpu:
        return None
    try:
        ref = resolve_gpu(model.reference_gpu)
    except GpumixError:
        return None
    quant = QuantSpec(id="f16", bits_per_weight=16)
    # The reference speed was measured on a typical card: compare with the fitted model's figure for it, not with
    # this machine's measurement of the same card (which would cancel out).
    typical = calibration.model_copy(update={"measurements": ()})
    ref_flops = achieved_flops(device_from_spec(ref, 0), quant, typical)
    here = achieved_flops(device, quant, calibration)
    if ref_flops <= 0 or here <= 0:
        return None
    return model.reference_speed * here / ref_flops
