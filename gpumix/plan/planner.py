"""The planner: plan file → Plan. What runs where, split how, in which mode, how fast, at what cost.

1. Devices come from the file (catalog names) or from this machine (NVML discovery).
2. Every service gets candidate placements ("options"): LLMs single card, llama.cpp layer split (speed-aware
   split from `split.best_layer_split`), CPU offload, vLLM tensor / pipeline parallel (speed-aware
   VLLM_PP_LAYER_PARTITION), replicas; other services one card each. Each option is estimated
   (`gpumix.estimate.estimate`) and scored against the service's objective.
3. HiGHS picks one option per service (`assign.solve_assignment`): memory within free − margin on every device,
   declared loads ≤ 1, the LLM on the card that serves it best, small services on the cheaper card.
4. Predictions, SLO checks, cost and lint warnings (`lint.py`) complete the Plan.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gpumix.errors import GpumixError
from gpumix.estimate import estimate
from gpumix.estimate.calibration import Calibration, load_calibration
from gpumix.estimate.memory import total_weight_bytes
from gpumix.estimate.speed import achieved_flops
from gpumix.estimate.types import Estimate, Links, Placement, Workload
from gpumix.hardware.spec import Device
from gpumix.models.spec import ModelSpec, QuantSpec
from gpumix.plan import split as splitmod
from gpumix.plan.assign import SOLVER_NAME, Choice, solve_assignment
from gpumix.plan.result import (
    Cost,
    MemoryBreakdown,
    Plan,
    PlannedDevice,
    PlannedService,
    Predicted,
    SloCheck,
    default_endpoints,
)
from gpumix.plan.spec import PlanSpec, ServiceEntry, _Lines, load_plan_with_lines

SECONDS_PER_MONTH = 30.44 * 86400  # average month (365.25 / 12 days)
MAX_GROUP = 4  # largest device group tried for one model (splits/TP/PP), per host
VLLM_QUANTS = {"fp8", "awq-int4", "gptq-int4", "bf16", "f16"}  # weight formats vLLM loads from HF repos
VLLM_ONLY_QUANTS = {"fp8", "awq-int4", "gptq-int4"}
# Weights of the assignment objective: an LLM's lost speed dominates; a service's lost speed counts little (they
# are rarely the bottleneck); the share of fast memory a service occupies steers small services to the cheap card.
LLM_SPEED_WEIGHT = 100.0
SERVICE_SPEED_WEIGHT = 0.2
PRICE_WEIGHT = 1.0
SLO_MISS_PENALTY = 50.0
DEFAULT_CONTEXT = 4096
# Problem sizes: up to EXACT_CHOICES candidate placements HiGHS must prove optimality (gap 0); above, it stops at
# LARGE_GAP or LARGE_TIME_LIMIT_S and the plan says "not proven optimal" with the gap. Above MAX_CHOICES each
# service keeps PRUNED_PER_CLASS hosts' candidates per kind of placement (see _prune).
EXACT_CHOICES = 400
LARGE_GAP = 1e-3
LARGE_TIME_LIMIT_S = 0.5
MAX_CHOICES = 4000
PRUNED_PER_CLASS = 3
MAX_HOSTS_PER_SERVICE = 8  # above this many hosts each service sees HOSTS_PER_CLASS hosts of each machine kind
HOSTS_PER_CLASS = 2
SINGLES_PER_CLASS = 2  # large fleets: one-card candidates per identical card type per host


@dataclass
class Resolved:
    """A service of the plan file with its model, quant, engine and workload resolved."""

    index: int
    entry: ServiceEntry
    model: ModelSpec
    quant: QuantSpec
    engine: str
    objective: str
    workload: Workload
    model_path: str | None


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
            mem <= splitmod.usable_bytes(dev) for dev, mem in zip(self.devices, self.memory_bytes, strict=True)
        )

    def fits(self) -> bool:
        return self._fits


def dkey(device: Device) -> tuple[str | None, int]:
    return (device.host, device.index)


# ---------------------------------------------------------------------------------------------- resolving


def _fail(source: str, lines: _Lines, loc: tuple, message: str, hint: str | None = None) -> GpumixError:
    line = lines.line(loc)
    where = f"{source}:{line}" if line else source
    field_name = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in loc).replace(".[", "[")
    return GpumixError(f"{where}: {field_name}: {message}", hint=hint)


def resolve_service(
    entry: ServiceEntry, index: int, spec: PlanSpec, source: str, lines: _Lines, objective: str | None
) -> Resolved:
    from gpumix.models.catalog import load_model, resolve_quant

    loc = ("services", index)
    try:
        model = load_model(entry.model)
    except GpumixError as exc:
        raise _fail(source, lines, (*loc, "model"), exc.message, exc.hint) from None
    model_path = entry.file or model.path
    if entry.file and model.layer_weight_bytes is None:
        model = _with_file_bytes(model, entry.file)
    if entry.quant:
        try:
            quant = resolve_quant(entry.quant)
        except GpumixError as exc:
            raise _fail(source, lines, (*loc, "quant"), exc.message, exc.hint) from None
    else:
        default = model.file_quant or ("bf16" if entry.engine == "vllm" else "q4_k_m")
        quant = resolve_quant(default if model.kind == "llm" else "f16")
    engine = entry.engine or _default_engine(model, quant, entry)
    if model.kind == "llm" and engine == "vllm" and quant.id not in VLLM_QUANTS:
        raise _fail(source, lines, (*loc, "quant"), f"vLLM does not load {quant.id} weights",
                    hint="use engine: llama.cpp for GGUF quants, or quant fp8 / awq-int4 / gptq-int4 / bf16")  # fmt: skip
    if model.kind == "llm" and engine == "llama.cpp" and quant.id in VLLM_ONLY_QUANTS:
        raise _fail(source, lines, (*loc, "engine"), f"llama.cpp cannot load {quant.id} weights",
                    hint="use engine: vllm, or a GGUF quant such as q4_k_m / q8_0")  # fmt: skip
    if model.kind != "llm" and engine in ("llama.cpp", "vllm") and model.n_layers == 0:
        raise _fail(source, lines, (*loc, "engine"), f"{model.name} is a {model.kind} model, not an LLM")
    context = entry.context or min(model.context_length or DEFAULT_CONTEXT, DEFAULT_CONTEXT)
    if model.context_length and context > model.context_length:
        raise _fail(source, lines, (*loc, "context"),
                    f"{context} tokens is above {model.name}'s trained context of {model.context_length}",
                    hint=f"use context: {model.context_length} or less")  # fmt: skip
    workload = Workload(
        context=context,
        parallel=entry.concurrency,
        engine=engine if engine in ("llama.cpp", "vllm") else "llama.cpp",
        kv_cache_dtype=entry.kv_cache_dtype or "f16",
        # gpumix launches llama-server with an explicit -np, which turns the unified KV cache off: every slot
        # gets `context` cells of its own (gpumix.launch.commands).
        kv_unified=engine != "llama.cpp",
        embeddings=engine == "llama.cpp" and (entry.task in ("embeddings", "rerank") or model.kind != "llm"),
    )
    return Resolved(
        index=index,
        entry=entry,
        model=model,
        quant=quant,
        engine=engine,
        objective=objective or entry.objective or spec.objective or "latency",
        workload=workload,
        model_path=model_path,
    )


def _with_file_bytes(model: ModelSpec, ref: str) -> ModelSpec:
    """The catalog model with the exact tensor bytes of the file the service names (when it is on this machine;
    a plan for another machine keeps the catalog's parameters × quant estimate)."""
    from gpumix.models.catalog import load_model
    from gpumix.models.files import resolve_file_ref

    try:
        path = resolve_file_ref(ref)
        if not path.is_file() or path.suffix.lower() != ".gguf":
            return model
        exact = load_model(str(path))
    except GpumixError:
        return model
    if exact.n_layers != model.n_layers:
        return model
    return model.model_copy(update={
        "layer_weight_bytes": exact.layer_weight_bytes, "non_layer_weight_bytes": exact.non_layer_weight_bytes,
        "file_quant": exact.file_quant, "path": str(path),
    })  # fmt: skip


def _default_engine(model: ModelSpec, quant: QuantSpec, entry: ServiceEntry) -> str:
    if model.kind in ("embedding", "reranker"):
        return "tei"
    if model.kind == "audio":
        return "whisper"
    if model.kind == "image":
        return "image"
    if quant.id in VLLM_ONLY_QUANTS or entry.mode in ("tensor_parallel", "pipeline_parallel"):
        return "vllm"
    return "llama.cpp"


def endpoints_for(model: ModelSpec, task: str | None = None) -> list[str]:
    """What the service answers: by its model's kind, or by `task` for an LLM file served as embeddings/rerank."""
    if task == "embeddings" or model.kind == "embedding":
        return list(default_endpoints("embedding"))
    if task == "rerank" or model.kind == "reranker":
        return list(default_endpoints("reranker"))
    return list(default_endpoints(model.kind, model.id))


# ---------------------------------------------------------------------------------------------- devices


def build_devices(spec: PlanSpec, source: str, lines: _Lines) -> tuple[list[Device], dict[tuple, int | None]]:
    """Devices of the plan file (or of this machine), and each device's CPU socket when known."""
    from gpumix.hardware.catalog import resolve_gpu
    from gpumix.hardware.devices import cpu_device, default_cpu_bandwidth_gb_per_s, device_from_spec, usable_threads
    from gpumix.units import GB

    if spec.devices is None:
        return _discovered_devices(), {}
    devices: list[Device] = []
    sockets: dict[tuple, int | None] = {}
    used: set[tuple[str | None, int]] = set()
    for i, entry in enumerate(spec.devices):
        loc = ("devices", i)
        if entry.cpu is not None:
            cpu = entry.cpu
            if cpu.ram_gb is None:
                raise _fail(source, lines, (*loc, "cpu"), "ram_gb is required (the plan may be for another machine)",
                            hint="e.g. cpu: {ram_gb: 64, bandwidth_gbs: 60}")  # fmt: skip
            index = -1 - sum(1 for h, k in used if h == entry.host and k < 0)
            device = cpu_device(
                int(cpu.ram_gb * GB), cpu.bandwidth_gbs or default_cpu_bandwidth_gb_per_s(),
                cpu.threads or usable_threads(), None if cpu.free_gb is None else int(cpu.free_gb * GB),
                index=index, host=entry.host,
            )  # fmt: skip
            used.add((entry.host, index))
            devices.append(device)
            continue
        try:
            gpu = resolve_gpu(str(entry.gpu))
        except GpumixError as exc:
            raise _fail(source, lines, (*loc, "gpu"), exc.message, exc.hint) from None
        start = entry.index
        if start is None:
            start = 1 + max((k for h, k in used if h == entry.host and k >= 0), default=-1)
        for k in range(entry.count):
            index = start + k
            if (entry.host, index) in used:
                raise _fail(source, lines, (*loc, "index"), f"index {index} is already used on this host")
            free = None if entry.free_gb is None else int(entry.free_gb * GB)
            try:
                device = device_from_spec(gpu, index, free_bytes=free, host=entry.host)
            except GpumixError as exc:
                raise _fail(source, lines, (*loc, "free_gb"), exc.message, exc.hint) from None
            update = {"driver_version": entry.driver}
            if entry.pcie_gen is not None:
                update["pcie_gen"] = entry.pcie_gen
            if entry.pcie_lanes is not None:
                update["pcie_width"] = entry.pcie_lanes
            device = device.model_copy(update=update)
            used.add((entry.host, index))
            sockets[dkey(device)] = entry.socket
            devices.append(device)
    return devices, sockets


def _discovered_devices() -> list[Device]:
    from gpumix.hardware.discovery import discover_machine

    try:
        machine = discover_machine()
    except GpumixError as exc:
        raise GpumixError(
            f"the plan file has no `devices:` and this machine's GPUs cannot be read: {exc.message}",
            hint="add a `devices:` list to the plan file, e.g. devices: [{gpu: RTX 4090}, {gpu: RTX 5060 Ti 16GB}]",
        ) from None
    return [g.device for g in machine.gpus]


def links_for(spec: PlanSpec, group: Sequence[Device], sockets: dict[tuple, int | None]) -> Links:
    """Interconnect of one device group: the file's links, each device's own PCIe link, NVLink, topology."""
    cfg = spec.links
    gen = cfg.pcie_gen if cfg and cfg.pcie_gen else min((d.pcie_gen or 4) for d in group)
    lanes = tuple((d.pcie_width or 16) for d in group)
    if cfg and cfg.pcie_lanes:
        lanes = tuple(cfg.pcie_lanes[d.index] if 0 <= d.index < len(cfg.pcie_lanes) else ln
                      for d, ln in zip(group, lanes, strict=True))  # fmt: skip
    lanes = tuple(min(ln, d.pcie_width or ln) if (cfg is None or not cfg.pcie_lanes) else ln
                  for d, ln in zip(group, lanes, strict=True))  # fmt: skip
    socks = {sockets.get(dkey(d)) for d in group} - {None}
    topology = (cfg.topology if cfg and cfg.topology else None) or ("SYS" if len(socks) > 1 else "PHB")
    hosts = {d.host for d in group}
    network = cfg.network_gbs if cfg and cfg.network_gbs else (1.25 if len(hosts) > 1 else None)  # 10 GbE
    gens = [d.pcie_gen or gen for d in group]
    return Links(
        pcie_gen=min(gens) if not (cfg and cfg.pcie_gen) else gen,
        pcie_lanes=lanes,
        nvlink=bool(cfg and cfg.nvlink),
        nvlink_gb_per_s=(cfg.nvlink_gbs or 0.0) if cfg else 0.0,
        topology=topology,
        network_gb_per_s=network,
    )


def _cached_links(spec: PlanSpec, group: Sequence[Device], sockets: dict, cache: dict | None) -> Links:
    if cache is None:
        return links_for(spec, group, sockets)
    key = ("links", tuple(device_class(d) + (d.index, d.host is None) for d in group),
           tuple(sockets.get(dkey(d)) for d in group), len({d.host for d in group}))  # fmt: skip
    if key not in cache:
        cache[key] = links_for(spec, group, sockets)
    return cache[key]


def device_price(device: Device, spec: PlanSpec) -> float | None:
    from gpumix.hardware.catalog import resolve_gpu

    for name, price in spec.prices.items():
        try:
            if resolve_gpu(name).id == device.spec.id:
                return price.gbp_per_month
        except GpumixError:
            if name.lower() in (device.spec.name.lower(), device.spec.id.lower()):
                return price.gbp_per_month
    return device.spec.price_gbp_per_month if device.kind == "gpu" else None


# ---------------------------------------------------------------------------------------------- options


def _speed_rank(device: Device) -> float:
    return device.spec.mem_bandwidth_gb_per_s


def _model_key(svc: Resolved) -> tuple:
    return (svc.model.id, svc.model.path, svc.quant.id)


def device_class(device: Device) -> tuple:
    """What makes two devices plan alike (identical cards of a fleet share estimates)."""
    return (device.spec.id, device.kind, device.memory_free_bytes, device.pcie_gen, device.pcie_width, device.threads)


def _llm_option(svc: Resolved, mode: str, group: Sequence[Device], layers: tuple[int, ...], links: Links,
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
        links = _cached_links(spec, group, sockets, cache)
        try:
            options.append(_llm_option(svc, mode, group, layers, links, cal, cache))
        except GpumixError:
            return

    for host_devices in groups_by_host:
        gpus = sorted((d for d in host_devices if d.kind == "gpu"), key=_speed_rank, reverse=True)
        cpus = [d for d in host_devices if d.kind == "cpu"]
        # vLLM's CPU build runs one rank per CPU device (a NUMA node, or a core range the plan file names), so on a
        # host without GPUs its TP/PP groups are made of CPU devices.
        distinct = _distinct_groups(gpus or (cpus if svc.engine == "vllm" else []))
        if want in ("auto", "single") and entry.replicas == 1:
            for d in _limit_per_class(gpus, per_class):
                add("single", [d])
            if svc.engine in ("llama.cpp", "vllm"):
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
    links = _cached_links(spec, group, sockets, cache)
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


# ---------------------------------------------------------------------------------------------- scoring


def _slo_checks(svc: Resolved, opt: Option) -> list[SloCheck]:
    slo = svc.entry.slo
    if slo is None:
        return []
    checks = []
    for metric, target, predicted, higher_better in (
        ("decode_tokens_per_s", slo.decode_tokens_per_s, opt.decode, True),
        ("aggregate_tokens_per_s", slo.aggregate_tokens_per_s, opt.aggregate, True),
        ("ttft_ms", slo.ttft_ms, None if opt.ttft_s is None else opt.ttft_s * 1000, False),
        ("throughput", slo.throughput, opt.throughput, True),
    ):
        if target is None:
            continue
        if predicted is None or predicted <= 0:
            checks.append(SloCheck(metric=metric, target=target, predicted=predicted, met=False))
            continue
        margin = predicted / target - 1 if higher_better else target / predicted - 1
        checks.append(SloCheck(metric=metric, target=target, predicted=round(predicted, 3), met=margin >= 0,
                               margin=round(margin, 4)))  # fmt: skip
    return checks


def score_options(svc: Resolved, options: list[Option], max_bandwidth: float) -> None:
    """Cost of each option (lower is better): log of the slowdown against the service's best option, weighted
    heavily for LLMs; plus the share of the fleet's fastest memory system it occupies (keeps big cards for big
    models); plus a penalty per missed SLO."""
    best = max((o.speed for o in options if o.fits()), default=0.0)
    weight = LLM_SPEED_WEIGHT if svc.model.kind == "llm" else SERVICE_SPEED_WEIGHT
    for opt in options:
        slowdown = math.log(best / opt.speed) if opt.speed > 0 and best > 0 else math.log(10.0)
        occupied = sum(d.spec.mem_bandwidth_gb_per_s for d in opt.devices if d.kind == "gpu") / max_bandwidth
        missed = sum(1 for c in _slo_checks(svc, opt) if not c.met)
        opt.cost = round(weight * max(slowdown, 0.0) + PRICE_WEIGHT * occupied + SLO_MISS_PENALTY * missed, 6)


# ---------------------------------------------------------------------------------------------- the plan


def plan_file(path: Path, objective: str | None = None, calibration: Path | None = None) -> Plan:
    """Plan the services of a plan file (what `gpumix plan FILE` and `gpumix up FILE` call)."""
    spec, lines = load_plan_with_lines(Path(path))
    return plan_services(spec, objective=objective, calibration=calibration, source=str(path), lines=lines)


def plan_services(
    spec: PlanSpec,
    *,
    objective: str | None = None,
    calibration: Path | Calibration | None = None,
    source: str | None = None,
    lines: _Lines | None = None,
    devices: Sequence[Device] | None = None,
) -> Plan:
    from gpumix.plan import lint

    if objective is not None and objective not in ("latency", "throughput"):
        raise GpumixError(f"unknown objective {objective!r}", hint="use latency or throughput")
    lines = lines or _Lines()
    src = source or "<plan>"
    cal = calibration if isinstance(calibration, Calibration) else load_calibration(calibration)
    cal_name = str(calibration) if isinstance(calibration, Path | str) else None
    if devices is None:
        devs, sockets = build_devices(spec, src, lines)
    else:
        devs, sockets = list(devices), {}
    if not devs:
        raise GpumixError(f"{src}: no devices to plan on", hint="add a `devices:` list")
    services = [resolve_service(e, i, spec, src, lines, objective) for i, e in enumerate(spec.services)]
    prices = {dkey(d): p for d in devs if (p := device_price(d, spec)) is not None}
    max_bandwidth = max((d.spec.mem_bandwidth_gb_per_s for d in devs), default=1.0)
    all_options: list[list[Option]] = []
    cache: dict = {}
    host_classes = _host_classes(devs)
    pruned_hosts = sum(len(hosts) for hosts in host_classes.values()) > MAX_HOSTS_PER_SERVICE
    for svc in services:
        pool = _candidate_devices(devs, host_classes, svc.index) if pruned_hosts and svc.entry.host is None else devs
        if svc.model.kind == "llm":
            opts = llm_options(svc, pool, spec, sockets, cal, cache, SINGLES_PER_CLASS if pruned_hosts else None)
        else:
            opts = service_options(svc, pool, cache)
        score_options(svc, opts, max_bandwidth)
        all_options.append(opts)

    choices: list[Choice] = []
    option_of: list[Option] = []
    index_of = {dkey(d): i for i, d in enumerate(devs)}
    for svc, opts in zip(services, all_options, strict=True):
        for opt in opts:
            if not opt.fits():
                continue
            load = svc.entry.load
            shares = _device_shares(opt)
            choices.append(Choice(
                service=svc.index, cost=opt.cost,
                memory={index_of[dkey(d)]: m for d, m in zip(opt.devices, opt.memory_bytes, strict=True)},
                load={index_of[dkey(d)]: load * s for d, s in zip(opt.devices, shares, strict=True)} if load else {},
            ))  # fmt: skip
            option_of.append(opt)
    capacity = {i: splitmod.usable_bytes(d) for i, d in enumerate(devs)}
    pruned = len(choices) > MAX_CHOICES or pruned_hosts
    if pruned:
        choices, option_of = _prune(choices, option_of, len(services))
    small = len(choices) <= EXACT_CHOICES
    result = solve_assignment(len(services), choices, capacity, rel_gap=0.0 if small else LARGE_GAP,
                              time_limit_s=20.0 if small else LARGE_TIME_LIMIT_S)  # fmt: skip
    per_service: dict[int, list[Option]] = {}
    for choice, opt in zip(choices, option_of, strict=True):
        per_service.setdefault(choice.service, []).append(opt)
    chosen: list[Option | None] = []
    for svc in services:
        local = result.chosen[svc.index]
        chosen.append(None if local is None else per_service[svc.index][local])

    reasons = [_unplaced_reason(svc, all_options[svc.index], devs, per_service.get(svc.index), chosen)
               for svc, opt in zip(services, chosen, strict=True) if opt is None]  # fmt: skip
    planned_services = [_planned_service(svc, opt) for svc, opt in zip(services, chosen, strict=True)]
    planned_devices = _planned_devices(devs, services, chosen, prices)
    planned_services = _service_costs(planned_services, planned_devices)
    cost = _cost(planned_devices, planned_services, services)
    plan = Plan(
        source=source,
        feasible=not reasons,
        optimal=result.optimal and not pruned,
        solver=SOLVER_NAME + ("" if result.optimal and not pruned else
                              f" (gap {result.gap:.2%}{', candidates pruned' if pruned else ''})"),
        reasons=reasons,
        devices=planned_devices,
        services=planned_services,
        cost=cost,
        calibration=cal_name,
    )
    context = lint.LintContext(spec=spec, devices=devs, services=services, options=all_options, chosen=chosen,
                               sockets=sockets, calibration=cal)  # fmt: skip
    return plan.model_copy(update={"warnings": lint.lint(plan, context)})


def _host_classes(devs: Sequence[Device]) -> dict[tuple, list[str | None]]:
    """Hosts grouped by their set of device classes (identical machines plan alike)."""
    by_host: dict[str | None, list[tuple]] = {}
    for d in devs:
        by_host.setdefault(d.host, []).append(device_class(d))
    classes: dict[tuple, list[str | None]] = {}
    for host, members in by_host.items():
        classes.setdefault(tuple(sorted(members, key=repr)), []).append(host)
    return classes


def _candidate_devices(devs: Sequence[Device], host_classes: dict[tuple, list[str | None]],
                       service: int) -> list[Device]:  # fmt: skip
    """Large fleets: a service is offered HOSTS_PER_CLASS hosts of each kind of machine, rotated by service so that
    services spread over the fleet; the plan then says it is not proven optimal."""
    chosen: set[str | None] = set()
    for hosts in host_classes.values():
        for k in range(min(HOSTS_PER_CLASS, len(hosts))):
            chosen.add(hosts[(service * HOSTS_PER_CLASS + k) % len(hosts)])
    return [d for d in devs if d.host in chosen]


def _prune(choices: list[Choice], option_of: list[Option], n_services: int) -> tuple[list[Choice], list[Option]]:
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


def _device_shares(opt: Option) -> list[float]:
    """Share of the service's time each device is busy: a layer split's token visits devices in turn."""
    if opt.est is None or opt.mode not in ("layer_split", "cpu_offload", "pipeline_parallel"):
        return [1.0] * len(opt.devices)
    times = [d.decode_s_per_token for d in opt.est.devices]
    total = sum(times) or 1.0
    return [t / total for t in times]


def _unplaced_reason(svc: Resolved, options: list[Option], devs: Sequence[Device], fitting: list[Option] | None,
                     chosen: list[Option | None]) -> str:  # fmt: skip
    from gpumix.units import GB

    name = f"{svc.entry.name} ({svc.model.name} {svc.quant.id})"
    if fitting and svc.entry.load:
        return (
            f"{name} fits in memory but every card it fits is already busy: with its declared load "
            f"{svc.entry.load:g} the services sharing the card would need more than 100% of its bandwidth/compute; "
            "add a card or lower the declared loads"
        )
    if fitting:
        placed = sum(sum(o.memory_bytes) for o in chosen if o is not None)
        need = min(sum(o.memory_bytes) for o in fitting)
        usable = sum(max(splitmod.usable_bytes(d), 0) for d in devs)
        return (
            f"{name} fits on its own but not next to the other services: they take {placed / GB:.1f} GB, it needs "
            f"{need / GB:.1f} GB more, and the devices offer {usable / GB:.1f} GB usable (free − margin) — "
            "a card's leftover space cannot be pooled; add memory or drop a service"
        )
    weights = total_weight_bytes(svc.model, svc.quant) if svc.model.kind == "llm" else svc.model.service_memory_bytes
    if not options:
        return f"{name}: no device can run it (mode {svc.entry.mode}, engine {svc.engine})"
    if svc.model.kind == "llm":
        gpus = [d for d in devs if d.kind == "gpu" and d.host == devs[0].host] or list(devs)
        if len(gpus) > 1 or not any(d.kind == "cpu" for d in devs):
            whole = estimate(svc.model, svc.quant, Placement(mode="layer_split", devices=tuple(gpus)), svc.workload,
                             Links(), load_calibration(None))  # fmt: skip
            need = sum(d.memory_bytes for d in whole.devices)
            have = sum(splitmod.usable_bytes(d) for d in gpus)
            if need > have:
                total = sum(d.memory_total_bytes for d in gpus)
                return (
                    f"{name} does not fit: it needs {need / GB:.1f} GB (weights {(weights or 0) / GB:.1f} GB + KV "
                    f"cache for {svc.workload.context} x {svc.workload.parallel} tokens + buffers) but "
                    f"{' + '.join(d.name for d in gpus)} have {total / GB:.1f} GB ({have / GB:.1f} GB usable after "
                    f"the safety margin): short by {(need - have) / GB:.1f} GB; add a card or system RAM "
                    "(CPU offload), or use a smaller quant / shorter context"
                )

    # The option that comes closest: smallest total shortfall against free − margin.
    def shortfall(o: Option) -> int:
        return sum(max(m - splitmod.usable_bytes(d), 0) for d, m in zip(o.devices, o.memory_bytes, strict=True))

    closest = min(options, key=shortfall)
    need = sum(closest.memory_bytes)
    have = sum(splitmod.usable_bytes(d) for d in closest.devices)
    where = " + ".join(d.name for d in closest.devices)
    return (
        f"{name} does not fit: it needs {need / GB:.1f} GB on {where}, which offer {have / GB:.1f} GB "
        f"(free − margin): short by {shortfall(closest) / GB:.1f} GB"
    )


def _planned_service(svc: Resolved, opt: Option | None) -> PlannedService:
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
    if engine == "vllm" and threads is None and all(d.kind == "cpu" for d in opt.devices):
        threads = svc.entry.threads or min(d.threads for d in opt.devices)  # OpenMP threads per vLLM CPU rank
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
        slo=_slo_checks(svc, opt),
    )


def _r(value: float | None, digits: int = 2) -> float | None:
    return None if value is None or math.isinf(value) or math.isnan(value) else round(value, digits)


def _planned_devices(devs: Sequence[Device], services: list[Resolved], chosen: list[Option | None],
                     prices: dict[tuple, float]) -> list[PlannedDevice]:  # fmt: skip
    index_of = {dkey(d): i for i, d in enumerate(devs)}
    planned: dict[int, int] = {i: 0 for i in range(len(devs))}
    bw: dict[int, float] = {i: 0.0 for i in range(len(devs))}
    compute: dict[int, float] = {i: 0.0 for i in range(len(devs))}
    for svc, opt in zip(services, chosen, strict=True):
        if opt is None:
            continue
        load = svc.entry.load if svc.entry.load is not None else (1.0 if svc.model.kind == "llm" else 0.0)
        for d, mem, share in zip(opt.devices, opt.memory_bytes, _device_shares(opt), strict=True):
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


def _service_costs(services: list[PlannedService], devices: list[PlannedDevice]) -> list[PlannedService]:
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


def _cost(devices: list[PlannedDevice], services: list[PlannedService], resolved: list[Resolved]) -> Cost:
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
