"""Placement options ("candidates") per service: an LLM on one card, a llama.cpp layer split (speed-aware split
from `split.solve_layer_split`), CPU offload, vLLM tensor / pipeline parallel, replicas; other services one card
each. Each option is estimated (`gpumix.estimate.estimate`).

Hosts: a service may go to any host. Single cards, TP, and splits sit within one host; replicas may spread over
hosts (each replica is its own process). A split may cross hosts only where the plan file says how: llama.cpp
layer split over the network with `allow_rpc: true`, vLLM pipeline parallel over Ray with `allow_multinode: true`.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from gpumix.errors import GpumixError
from gpumix.estimate import estimate
from gpumix.estimate.calibration import Calibration
from gpumix.estimate.memory import service_memory, usable_bytes
from gpumix.estimate.speed import achieved_flops
from gpumix.estimate.types import Estimate, Links, MemoryBreakdown, Placement
from gpumix.hardware.spec import Device
from gpumix.kinds import SPLIT_MODES, Objective, PlacementMode
from gpumix.models.spec import ModelSpec, QuantSpec
from gpumix.plan import split as splitmod
from gpumix.plan.fleet import device_class, links_for
from gpumix.plan.resolve import Resolved
from gpumix.plan.spec import PlanSpec, ServiceEntry

MAX_GROUP = 4  # largest device group tried for one model (splits/TP/PP), per host
SMALL_HOST_GPUS = 5  # up to this many GPUs every subset is a candidate group; above, one group per mix of card types
ALL_REPLICA_SETS_UP_TO = 6  # GPUs; above, only the fastest and the slowest n cards are tried as n replicas


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
    cache: dict = field(default_factory=dict)

    def links(self, group: Sequence[Device]) -> Links:
        key = ("links", tuple(device_class(d) + (d.index, d.host is None) for d in group),
               tuple(self.sockets.get(d.id) for d in group), len({d.host for d in group}))  # fmt: skip
        if key not in self.cache:
            self.cache[key] = links_for(self.spec, group, self.sockets)
        return self.cache[key]


def _speed_rank(device: Device) -> float:
    return device.spec.mem_bandwidth_gb_per_s


def _model_key(svc: Resolved) -> tuple:
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


def llm_option(svc: Resolved, mode: PlacementMode, group: Sequence[Device], layers: tuple[int, ...], links: Links,
               calibration: Calibration, cache: dict | None = None) -> Option:  # fmt: skip
    """One LLM placement, estimated. Raises GpumixError when the estimator cannot place it that way."""
    est_mode = "layer_split" if mode == "cpu_offload" else mode
    workload = svc.workload
    if mode in ("tensor_parallel", "pipeline_parallel") or (mode in ("single", "replica") and svc.engine == "vllm"):
        workload = workload.model_copy(update={"engine": "vllm"})
    key = ("est", _model_key(svc), workload, mode, tuple(device_class(d) for d in group), layers, links)
    est = None if cache is None else cache.get(key)
    if est is None:
        placement = Placement(mode=est_mode, devices=tuple(group), layers=layers)
        est = estimate(svc.model, svc.quant, placement, workload, links, calibration)
        if cache is not None:
            cache[key] = est
    opt = Option(
        service=svc.index, mode=mode, devices=tuple(group), layers=layers, est=est,
        memory=tuple(d.memory for d in est.devices),
        decode=est.decode_tokens_per_s, aggregate=est.aggregate_tokens_per_s,
        prefill=est.prefill_tokens_per_s, ttft_s=est.ttft_s,
    )  # fmt: skip
    opt.speed = (opt.decode if svc.objective == "latency" else opt.aggregate) or 0.0
    return opt


class _Options:
    """The options of one LLM service, without duplicates; estimates that fail are left out."""

    def __init__(self, svc: Resolved, ctx: CandidateContext) -> None:
        self.svc, self.ctx = svc, ctx
        self.items: list[Option] = []
        self._seen: set[tuple] = set()

    def add(self, mode: PlacementMode, group: Sequence[Device], layers: tuple[int, ...] = ()) -> None:
        key = (mode, tuple(d.id for d in group), layers)
        if key in self._seen:
            return
        self._seen.add(key)
        try:
            self.items.append(llm_option(self.svc, mode, group, layers, self.ctx.links(group),
                                         self.ctx.calibration, self.ctx.cache))  # fmt: skip
        except GpumixError:
            return

    def split(self, group: Sequence[Device], objective: Objective, vllm: bool = False,
              min_layers: int = 0) -> tuple[int, ...] | None:  # fmt: skip
        svc, ctx = self.svc, self.ctx
        workload = svc.workload.model_copy(update={"engine": "vllm"}) if vllm else svc.workload
        links = ctx.links(group)
        key = ("split", _model_key(svc), workload, objective, tuple(device_class(d) for d in group), links, min_layers)
        if key not in ctx.cache:
            ctx.cache[key] = splitmod.solve_layer_split(svc.model, svc.quant, group, workload, objective, links,
                                                        ctx.calibration, min_layers_per_device=min_layers)  # fmt: skip
        return ctx.cache[key]


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
        if svc.engine == "llama.cpp":
            for d in cpus:
                options.add("single", [d])  # all layers in RAM: the only choice without GPUs, a slow one beside them
    groups = _distinct_groups(gpus)
    if svc.engine == "llama.cpp":
        _layer_splits(options, groups)
        _cpu_offloads(options, groups, cpus)
    if svc.engine == "vllm":
        _tensor_parallel(options, groups)
        _pipeline_parallel(options, groups)
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
    fits_alone = {device_class(o.devices[0]) for o in options.items if o.mode == "single" and o.fits()}
    for group in groups:
        if len(group) < 2 or (want == "auto" and device_class(group[0]) in fits_alone):
            continue  # a split is slower than the group's fastest card when the model fits it
        layers = options.split(group, svc.objective, min_layers=1 if want == "layer_split" else 0)
        if layers is not None and all(layers):
            options.add("layer_split", group, layers)


def _cpu_offloads(options: _Options, groups: list[list[Device]], cpus: list[Device],
                  only: Callable[[list[Device]], bool] | None = None) -> None:  # fmt: skip
    if options.svc.entry.mode not in ("auto", "cpu_offload") or not cpus:
        return
    for group in [g for g in groups if len(g) <= 2]:
        offload = [cpus[0], *group]
        if only is not None and not only(offload):
            continue
        layers = options.split(offload, "latency")
        if layers is not None and layers[0] > 0:
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
            layers = options.split(group, "throughput", vllm=True, min_layers=1)
            if layers is not None and all(layers):
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
    taken: dict[tuple, int] = {}
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
    by_type: dict[tuple, list[Device]] = {}
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
    """Non-LLM services (image, audio, embeddings, rerankers): one card each (any host), speed ∝ its FLOP/s."""
    options = []
    for d in service_pool(svc.entry, devices):
        if d.kind == "cpu" and svc.model.kind == "image":
            continue  # diffusion on a CPU is minutes per image: not a placement anyone wants
        key = ("speed", svc.model.id, device_class(d))
        if key not in ctx.cache:
            ctx.cache[key] = service_speed(svc.model, d, ctx.calibration)
        throughput = ctx.cache[key]
        opt = Option(service=svc.index, mode="single", devices=(d,), memory=(service_memory(svc.model, d.kind == "gpu"),),
                     throughput=throughput, throughput_unit=svc.model.speed_unit)  # fmt: skip
        opt.speed = throughput or 0.0
        options.append(opt)
    return options


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
