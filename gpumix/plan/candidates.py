"""Placement options ("candidates") per service: an LLM on one card, a llama.cpp layer split (speed-aware split
from `split.solve_layer_split`), CPU offload, vLLM tensor / pipeline parallel, replicas; other services one card
each. Each option is estimated (`gpumix.estimate.estimate`). Large fleets prune equivalent candidates."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

from gpumix.errors import GpumixError
from gpumix.estimate import estimate
from gpumix.estimate.calibration import Calibration, load_calibration
from gpumix.estimate.memory import usable_bytes
from gpumix.estimate.speed import achieved_flops
from gpumix.estimate.types import Estimate, Links, Placement
from gpumix.hardware.spec import Device
from gpumix.models.spec import ModelSpec, QuantSpec
from gpumix.plan import split as splitmod
from gpumix.plan.assign import Choice
from gpumix.plan.fleet import cached_links, device_class, dkey
from gpumix.plan.resolve import Resolved
from gpumix.plan.result import MemoryBreakdown
from gpumix.plan.spec import PlanSpec

MAX_GROUP = 4  # largest device group tried for one model (splits/TP/PP), per host
# Large fleets: above MAX_CHOICES candidate placements each service keeps PRUNED_PER_CLASS hosts' candidates per
# kind of placement (see prune_choices); above MAX_HOSTS_PER_SERVICE hosts each service sees HOSTS_PER_CLASS hosts
# of each machine kind, and SINGLES_PER_CLASS one-card candidates per identical card type per host.
MAX_CHOICES = 4000
PRUNED_PER_CLASS = 3
MAX_HOSTS_PER_SERVICE = 8
HOSTS_PER_CLASS = 2
SINGLES_PER_CLASS = 2


@dataclass
class Option:
    service: int
    mode: str
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
        return all(
            mem <= usable_bytes(dev) for dev, mem in zip(self.devices, self.memory_bytes, strict=True)
        )

    def fits(self) -> bool:
        return self._fits


def _speed_rank(device: Device) -> float:
    return device.spec.mem_bandwidth_gb_per_s


def _model_key(svc: Resolved) -> tuple:
    return (svc.model.id, svc.model.path, svc.quant.id)


def llm_option(svc: Resolved, mode: str, group: Sequence[Device], layers: tuple[int, ...], links: Links,
                cal: Calibration, cache: dict | None = None) -> Option:  # fmt: skip
    est_mode = "layer_split" if mode == "cpu_offload" else mode
    workload = svc.workload
    if mode in ("tensor_parallel", "pipeline_parallel") or (mode in ("single", "replica") and svc.engine == "vllm"):
        workload = workload.model_copy(update={"engine": "vllm"})
    key = ("est", _model_key(svc), workload, mode, tuple(device_class(d) for d in group), layers, links)
    est = None if cache is None else cache.get(key)
    if est is None:
        placement = Placement(mode=est_mode, devices=tuple(group), layers=layers)
        est = estimate(svc.model, svc.quant, placement, workload, links, cal)
        if cache is not None:
            cache[key] = est
    opt = Option(
        service=svc.index, mode=mode, devices=tuple(group), layers=layers, est=est,
        memory=tuple(d.memory for d in est.devices),
        decode=est.decode_tokens_per_s, aggregate=est.aggregate_tokens_per_s,
        prefill=est.prefill_tokens_per_s, ttft_s=est.ttft_s,
    )  # fmt: skip
    if mode == "replica":
        opt.aggregate = est.aggregate_tokens_per_s
    opt.speed = opt.decode if svc.objective == "latency" else opt.aggregate
    return opt


def llm_options(svc: Resolved, devices: Sequence[Device], spec: PlanSpec, sockets: dict, cal: Calibration,
                cache: dict | None = None, per_class: int | None = None) -> list[Option]:  # fmt: skip
    """Every placement worth estimating for one LLM service, on each host separately."""
    entry = svc.entry
    pool = [d for d in devices if entry.devices is None or d.index in entry.devices]
    if entry.host is not None:
        pool = [d for d in pool if d.host == entry.host]
    hosts: dict[str | None, list[Device]] = {}
    for d in pool:
        hosts.setdefault(d.host, []).append(d)
    groups_by_host = list(hosts.values())
    if entry.allow_rpc and len(hosts) > 1:
        groups_by_host.append(pool)  # one split may span hosts over the network (llama.cpp RPC)
    want = entry.mode
    options: list[Option] = []
    seen: set[tuple] = set()

    def add(mode: str, group: Sequence[Device], layers: tuple[int, ...] = ()) -> None:
        key = (mode, tuple(dkey(d) for d in group), layers)
        if key in seen:
            return
        seen.add(key)
        links = cached_links(spec, group, sockets, cache)
        try:
            options.append(llm_option(svc, mode, group, layers, links, cal, cache))
        except GpumixError:
            return

    for host_devices in groups_by_host:
        gpus = sorted((d for d in host_devices if d.kind == "gpu"), key=_speed_rank, reverse=True)
        cpus = [d for d in host_devices if d.kind == "cpu"]
        distinct = _distinct_groups(gpus)
        if want in ("auto", "single") and entry.replicas == 1:
            for d in _limit_per_class(gpus, per_class):
                add("single", [d])
            if svc.engine == "llama.cpp":
                for d in cpus:
                    add("single", [d])  # all layers in RAM: the only choice without GPUs, a slow one beside them
        fits_alone = {device_class(o.devices[0]) for o in options if o.mode == "single" and o.fits()}
        if svc.engine == "llama.cpp" and want in ("auto", "layer_split"):
            for group in distinct:
                if len(group) < 2 or (want == "auto" and device_class(group[0]) in fits_alone):
                    continue  # a split is slower than the group's fastest card when the model fits it
                forced = 1 if want == "layer_split" else 0
                layers = _split(svc, group, svc.objective, spec, sockets, cal, cache=cache, min_layers=forced)
                if layers is not None and all(layers):
                    add("layer_split", group, layers)
        if svc.engine == "llama.cpp" and want in ("auto", "cpu_offload") and cpus:
            for group in [g for g in distinct if len(g) <= 2]:
                offload = [cpus[0], *group]
                layers = _split(svc, offload, "latency", spec, sockets, cal, cache=cache)
                if layers is not None and layers[0] > 0:
                    add("cpu_offload", offload, layers)
        if svc.engine == "vllm" and want in ("auto", "tensor_parallel"):
            for group in distinct:
                identical = len({d.spec.id for d in group}) == 1
                if len(group) in (2, 4, 8) and (identical or want == "tensor_parallel"):
                    add("tensor_parallel", group)
        if svc.engine == "vllm" and want in ("auto", "pipeline_parallel"):
            for group in distinct:
                if len(group) >= 2:
                    layers = _split(svc, group, "throughput", spec, sockets, cal, vllm=True, cache=cache, min_layers=1)
                    if layers is not None and all(layers):
                        add("pipeline_parallel", group, layers)
        n_rep = entry.replicas if entry.replicas > 1 else (2 if svc.objective == "throughput" else 0)
        if want == "replica" and n_rep == 0:
            n_rep = max(len(gpus), 1)
        if n_rep >= 2 and want in ("auto", "replica") and len(gpus) >= n_rep:
            for group in _replica_groups(gpus, n_rep):
                add("replica", group)
    return options


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
    """Device groups (fastest first) worth trying: every subset of size ≤ MAX_GROUP on small hosts; on big hosts
    one group per mix of card types (identical cards are interchangeable)."""
    if len(gpus) <= 5:
        groups = []
        for size in range(1, min(len(gpus), MAX_GROUP) + 1):
            groups.extend(list(g) for g in itertools.combinations(gpus, size))
        return groups
    by_type: dict[tuple, list[Device]] = {}
    for d in gpus:
        by_type.setdefault((d.spec.id, d.memory_free_bytes), []).append(d)
    kinds = list(by_type.values())
    groups = []
    for size in range(1, MAX_GROUP + 1):
        for combo in itertools.combinations_with_replacement(range(len(kinds)), size):
            counts = {k: combo.count(k) for k in set(combo)}
            if all(len(kinds[k]) >= c for k, c in counts.items()):
                group = [d for k, c in counts.items() for d in kinds[k][:c]]
                groups.append(sorted(group, key=_speed_rank, reverse=True))
    return groups


def _replica_groups(gpus: list[Device], n: int) -> list[list[Device]]:
    if len(gpus) <= 6:
        return [list(g) for g in itertools.combinations(gpus, n)]
    return [gpus[:n], gpus[-n:]]


def _split(svc: Resolved, group: Sequence[Device], objective: str, spec: PlanSpec, sockets: dict,
           cal: Calibration, vllm: bool = False, cache: dict | None = None,
           min_layers: int = 0) -> tuple[int, ...] | None:  # fmt: skip
    workload = svc.workload.model_copy(update={"engine": "vllm"}) if vllm else svc.workload
    links = cached_links(spec, group, sockets, cache)
    key = ("split", _model_key(svc), workload, objective, tuple(device_class(d) for d in group), links, min_layers)
    if cache is not None and key in cache:
        return cache[key]
    layers = splitmod.solve_layer_split(svc.model, svc.quant, group, workload, objective, links, cal,  # type: ignore[arg-type]
                                        min_layers_per_device=min_layers)  # fmt: skip
    if cache is not None:
        cache[key] = layers
    return layers


def service_options(svc: Resolved, devices: Sequence[Device], cache: dict | None = None) -> list[Option]:
    """Non-LLM services (image, audio, embeddings, rerankers): one card each, speed ∝ the card's FLOP/s."""
    from gpumix.estimate.memory import service_memory

    pool = [d for d in devices if svc.entry.devices is None or d.index in svc.entry.devices]
    if svc.entry.host is not None:
        pool = [d for d in pool if d.host == svc.entry.host]
    options = []
    for d in pool:
        if d.kind == "cpu" and svc.model.kind == "image":
            continue  # diffusion on a CPU is minutes per image: not a placement anyone wants
        mem = service_memory(svc.model, d.kind == "gpu")
        key = ("speed", svc.model.id, device_class(d))
        if cache is not None and key in cache:
            throughput = cache[key]
        else:
            throughput = service_speed(svc.model, d)
            if cache is not None:
                cache[key] = throughput
        opt = Option(service=svc.index, mode="single", devices=(d,), memory=(mem,), throughput=throughput,
                     throughput_unit=svc.model.speed_unit)  # fmt: skip
        opt.speed = throughput or 0.0
        options.append(opt)
    return options


def service_speed(model: ModelSpec, device: Device) -> float | None:
    """The catalog's reference speed scaled by achieved FP16 FLOP/s (these services are compute-bound)."""
    from gpumix.hardware.catalog import resolve_gpu
    from gpumix.hardware.devices import device_from_spec

    if not model.reference_speed or not model.reference_gpu:
        return None
    try:
        ref = resolve_gpu(model.reference_gpu)
    except GpumixError:
        return None
    cal = load_calibration(None)
    quant = QuantSpec(id="f16", bits_per_weight=16)
    ref_flops = achieved_flops(device_from_spec(ref, 0), quant, cal)
    here = achieved_flops(device, quant, cal)
    if ref_flops <= 0 or here <= 0:
        return None
    return model.reference_speed * here / ref_flops


# ------------------------------------------------------------------------------------- large fleets


def host_classes(devs: Sequence[Device]) -> dict[tuple, list[str | None]]:
    """Hosts grouped by their set of device classes (identical machines plan alike)."""
    by_host: dict[str | None, list[tuple]] = {}
    for d in devs:
        by_host.setdefault(d.host, []).append(device_class(d))
    classes: dict[tuple, list[str | None]] = {}
    for host, members in by_host.items():
        classes.setdefault(tuple(sorted(members, key=repr)), []).append(host)
    return classes


def candidate_devices(devs: Sequence[Device], host_classes: dict[tuple, list[str | None]],
                       service: int) -> list[Device]:  # fmt: skip
    """Large fleets: a service is offered HOSTS_PER_CLASS hosts of each kind of machine, rotated by service so that
    services spread over the fleet; the plan then says it is not proven optimal."""
    chosen: set[str | None] = set()
    for hosts in host_classes.values():
        for k in range(min(HOSTS_PER_CLASS, len(hosts))):
            chosen.add(hosts[(service * HOSTS_PER_CLASS + k) % len(hosts)])
    return [d for d in devs if d.host in chosen]


def prune_choices(choices: list[Choice], option_of: list[Option], n_services: int) -> tuple[list[Choice], list[Option]]:
    """Large fleets: identical cards on many hosts make thousands of equivalent candidates. Keep, per service and
    per kind of placement (mode + card types), PRUNED_PER_CLASS candidates on different hosts — rotated by service
    so that services sharing a card type are offered different hosts."""
    groups: dict[tuple, list[int]] = {}
    for j, (c, opt) in enumerate(zip(choices, option_of, strict=True)):
        signature = (c.service, opt.mode, tuple(device_class(d) for d in opt.devices), opt.layers)
        groups.setdefault(signature, []).append(j)
    keep: list[int] = []
    for (service, *_), js in groups.items():
        hosts = sorted({option_of[j].devices[0].host or "" for j in js})
        rank = {h: (i - service) % len(hosts) for i, h in enumerate(hosts)}
        js.sort(key=lambda j: (rank[option_of[j].devices[0].host or ""], option_of[j].devices[0].index))
        per_host: dict[str, int] = {}
        for j in js:
            host = option_of[j].devices[0].host or ""
            if per_host.get(host, 0) < 2 and len(per_host) <= PRUNED_PER_CLASS:
                per_host[host] = per_host.get(host, 0) + 1
                keep.append(j)
    keep.sort()
    return [choices[j] for j in keep], [option_of[j] for j in keep]



def device_shares(opt: Option) -> list[float]:
    """Share of the service's time each device is busy: a layer split's token visits devices in turn."""
    if opt.est is None or opt.mode not in ("layer_split", "cpu_offload", "pipeline_parallel"):
        return [1.0] * len(opt.devices)
    times = [d.decode_s_per_token for d in opt.est.devices]
    total = sum(times) or 1.0
    return [t / total for t in times]


