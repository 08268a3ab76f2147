"""Advice: when a service does not fit or misses its SLO, the changes that would fix it — each one re-planned with
the real planner (the changed plan file is planned as a whole), never guessed.

A suggestion (`gpumix.plan.result.Suggestion`) says the change in one line, whether the re-planned plan is
feasible with the service placed and its SLOs met, the service's predicted one-stream decode and the plan's £/month.
Cheapest first (unknown cost after known), then fastest; infeasible changes last (they say what is not enough).

Bounded work. Per advised service, at most:
- quant: the next 3 smaller weight formats of the engine's ladder (llama.cpp k-quants, vLLM bf16 → fp8 → AWQ);
- context: the context halved and quartered (not below 1024 tokens);
- kv_cache: a q8_0 and a q4_0 KV cache (llama.cpp), fp8 (vLLM), when the cache is 16-bit;
- cpu_offload: RAM for llama.cpp CPU offload on the service's host: its CPU with twice the RAM (at least 64 GB), or,
  without one, a typical 64 GB dual-channel DDR4-3200 desktop (a Ryzen 7 5800X), 128 GB if 64 is not enough;
- add_card: one more card on the host: each card type already there, then the 3 cheapest priced catalog cards
  (plan `prices:` or the catalog's rent) that bring enough memory (or, for a missed SLO, more bandwidth);
- replace_card: each of the host's two smallest card types swapped for up to 3 such cards with more memory;
- drop_service: (a service that did not fit) up to 2 other services, the biggest first.
At most 3 services are advised per plan and 40 plans re-planned in all (12 for a plan of more than 8 services).
Re-plans share the planning run's cache of estimates. Measured by bench/plan/advice_bench.py (docs/plan-file.md,
"Advice"): ~7 ms per re-plan of a two-card plan, ~0.5 s for the 21-service fleet.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gpumix.errors import GpumixError
from gpumix.estimate.memory import total_weight_bytes, usable_bytes
from gpumix.hardware.catalog import all_gpus
from gpumix.hardware.devices import device_from_spec
from gpumix.hardware.entries import CpuEntry, DeviceEntry, devices_from_entries
from gpumix.hardware.spec import Device, GpuSpec
from gpumix.models.catalog import resolve_quant
from gpumix.models.spec import QuantSpec
from gpumix.plan.candidates import by_host, service_pool
from gpumix.plan.fleet import device_price
from gpumix.plan.planning import Planning
from gpumix.plan.resolve import Resolved
from gpumix.plan.result import Plan, Suggestion, SuggestionKind
from gpumix.plan.spec import PlanSpec
from gpumix.plan.unplaced import layer_split_need_bytes, roomiest_gpus
from gpumix.units import GB, GiB
from gpumix.yaml_input import SourceLines

MAX_SERVICES = 3
MAX_REPLANS = 40
# A plan of many services re-plans slowly (HiGHS proves each assignment optimal: ~0.5 s for the 21-service fleet of
# examples/fleet.yaml on this project's 2-core VM, bench/plan/advice_bench.py), so it gets fewer re-plans.
LARGE_PLAN_SERVICES = 8
MAX_REPLANS_LARGE = 12
MAX_QUANTS = 3
MAX_CARDS = 3  # priced catalog cards tried per add / per replaced card type
MAX_REPLACED_TYPES = 2
MAX_DROPS = 2
MIN_CONTEXT = 1024
# Weight-format ladders, largest first: the "same family" a smaller quant is taken from.
LLAMA_CPP_LADDER = ("f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_k_s", "iq4_xs", "q3_k_m", "q2_k")
VLLM_LADDER = ("bf16", "fp8", "awq-int4")
KV_CHOICES = {"llama.cpp": ("q8_0", "q4_0"), "vllm": ("fp8",)}
SIXTEEN_BIT_KV = ("f16", "bf16", "auto")
# A typical desktop to offload to when the host has no CPU entry (VISION.md's homelab box): 64 GB dual-channel
# DDR4-3200 on a Ryzen 7 5800X (8 cores); 128 GB when 64 is not enough.
TYPICAL_CPU_MODEL, TYPICAL_RAM_TYPE, TYPICAL_RAM_CHANNELS = "Ryzen 7 5800X", "DDR4-3200", 2
TYPICAL_RAM_GB = (64, 128)

Replan = Callable[[PlanSpec, Sequence[Device] | None], Plan]


@dataclass(frozen=True)
class Hardware:
    """What a change edits: the plan file's `devices:` entries (`devices` None), or — for a machine found by
    discovery, `gpumix compare` and `gpumix estimate` — the devices themselves."""

    spec: PlanSpec
    devices: tuple[Device, ...] | None


@dataclass(frozen=True)
class _Change:
    kind: SuggestionKind
    change: str
    hardware: Hardware
    extra_gbp_per_month: float | None = 0.0  # what the change adds to the monthly bill (None: a card without price)
    if_previous_fails: bool = False  # a bigger step of the same change: tried only when the smaller one was not enough


def suggest(ctx: Planning, replan: Replan, devices: Sequence[Device] | None) -> list[Suggestion]:
    """Suggestions for every service of `ctx.plan` that is unplaced or misses an SLO (the first MAX_SERVICES).
    `replan(spec, devices)` plans a changed spec (devices None: from its `devices:` entries); `devices` are the
    devices this planning used when they did not come from the file's entries."""
    hardware = Hardware(spec=ctx.spec, devices=None if devices is None else tuple(devices))
    out: list[Suggestion] = []
    budget = [MAX_REPLANS if len(ctx.services) <= LARGE_PLAN_SERVICES else MAX_REPLANS_LARGE]
    for svc in [s for s in ctx.services if _needs_advice(ctx.plan, s.entry.name)][:MAX_SERVICES]:
        changes = _changes(svc, ctx, hardware)
        out.extend(_evaluate(svc.entry.name, changes, replan, budget))
    return out


def _needs_advice(plan: Plan, name: str) -> bool:
    planned = plan.service(name)
    return not planned.devices or any(not c.met for c in planned.slo)


def _evaluate(name: str, changes: list[_Change], replan: Replan, budget: list[int]) -> list[Suggestion]:
    seen: set[str] = set()
    out: list[tuple[Suggestion, float | None]] = []
    for change in changes:
        if budget[0] <= 0 or change.change in seen:
            continue
        if change.if_previous_fails and out and out[-1][0].kind == change.kind and out[-1][0].feasible:
            continue
        seen.add(change.change)
        budget[0] -= 1
        try:
            plan = replan(change.hardware.spec, change.hardware.devices)
        except GpumixError:
            continue  # a change the planner refuses (e.g. a quant the engine cannot load) is no advice
        out.append((_suggestion(name, change, plan), change.extra_gbp_per_month))
    return [s for s, _ in sorted(out, key=_order)]


def _suggestion(name: str, change: _Change, plan: Plan) -> Suggestion:
    svc = plan.service(name) if any(s.name == name for s in plan.services) else None
    placed = svc is not None and bool(svc.devices)
    met = svc is not None and all(c.met for c in svc.slo)
    return Suggestion(
        service=name, kind=change.kind, change=change.change, feasible=plan.feasible and placed and met,
        decode_tokens_per_s=svc.predicted.decode_tokens_per_s if svc is not None and placed else None,
        gbp_per_month=plan.cost.gbp_per_month,
    )  # fmt: skip


def _order(item: tuple[Suggestion, float | None]) -> tuple[bool, bool, float, float]:
    """Feasible first; then cheapest: what the change adds to the monthly bill (a quant, context, KV or RAM change
    adds nothing; a card its price, or the price difference of a swap), a card without price after those; then
    fastest."""
    s, extra = item
    return (not s.feasible, extra is None, extra or 0.0, -(s.decode_tokens_per_s or 0.0))


# ------------------------------------------------------------------------------------------------ the changes


def _changes(svc: Resolved, ctx: Planning, hw: Hardware) -> list[_Change]:
    unplaced = ctx.chosen[svc.index] is None
    short = _shortfall_bytes(svc, ctx) if unplaced else 0
    out: list[_Change] = []
    if svc.model.kind == "llm":
        out += _quant_changes(svc, hw, short)
        if unplaced:
            out += _context_changes(svc, hw)
            out += _kv_changes(svc, hw)
            out += _offload_changes(svc, ctx, hw)
    host = _host_of(svc, ctx)
    out += _card_changes(svc, ctx, hw, host, short)
    if unplaced:
        out += _drop_changes(svc, ctx, hw)
    return out


def _with_service(hw: Hardware, svc: Resolved, **update: Any) -> Hardware:
    services = list(hw.spec.services)
    services[svc.index] = services[svc.index].model_copy(update=update)
    return Hardware(spec=hw.spec.model_copy(update={"services": services}), devices=hw.devices)


def _quant_changes(svc: Resolved, hw: Hardware, short: int) -> list[_Change]:
    """The next smaller formats of the engine's ladder; for a misfit, from the last one that saves too little to
    the first two that save at least the shortfall."""
    if svc.entry.file:  # the file fixes the weights; a smaller quant is another file
        return []
    ladder = VLLM_LADDER if svc.engine == "vllm" else LLAMA_CPP_LADDER
    quants = [q for q in (_quant(name) for name in ladder) if q is not None]
    smaller = [q for q in quants if q.bits_per_weight < svc.quant.bits_per_weight and svc.engine in q.engines]
    now_bytes = total_weight_bytes(svc.model, svc.quant)
    saves = [now_bytes - total_weight_bytes(svc.model, q) >= short for q in smaller]
    first = saves.index(True) if True in saves else len(smaller)
    picked = smaller[max(first - 1, 0):][:MAX_QUANTS]
    now = now_bytes / GB
    out = []
    for q in picked:
        new = total_weight_bytes(svc.model, q) / GB
        out.append(_Change("quant", f"{svc.entry.name}: use {q.id} instead of {svc.quant.id} ({now:.1f} → {new:.1f} GB "
                           "of weights)", _with_service(hw, svc, quant=q.id)))  # fmt: skip
    return out


def _quant(name: str) -> QuantSpec | None:
    try:
        return resolve_quant(name)
    except GpumixError:
        return None


def _context_changes(svc: Resolved, hw: Hardware) -> list[_Change]:
    now = svc.workload.context
    out = []
    for divisor in (2, 4):
        context = now // divisor
        if context >= MIN_CONTEXT:
            out.append(_Change("context", f"{svc.entry.name}: context {context} tokens instead of {now}",
                               _with_service(hw, svc, context=context)))  # fmt: skip
    return out


def _kv_changes(svc: Resolved, hw: Hardware) -> list[_Change]:
    now = svc.workload.kv_cache_dtype
    if now not in SIXTEEN_BIT_KV:
        return []
    return [_Change("kv_cache", f"{svc.entry.name}: {dtype} KV cache instead of {now} (KV memory x{_kv_ratio(dtype):.2f})",
                    _with_service(hw, svc, kv_cache_dtype=dtype)) for dtype in KV_CHOICES.get(svc.engine, ())]  # fmt: skip


def _kv_ratio(dtype: str) -> float:
    from gpumix.estimate.memory import kv_bytes_per_element

    return kv_bytes_per_element(dtype) / kv_bytes_per_element("f16")


def _offload_changes(svc: Resolved, ctx: Planning, hw: Hardware) -> list[_Change]:
    """More RAM (or a typical desktop's) for llama.cpp to keep the first layers in."""
    if svc.engine != "llama.cpp" or svc.entry.mode not in ("auto", "cpu_offload", "layer_split", "single"):
        return []
    host = _host_of(svc, ctx)
    mode = {} if svc.entry.mode in ("auto", "cpu_offload") else {"mode": "auto"}
    base = _with_service(hw, svc, **mode) if mode else hw
    cpus = [d for d in ctx.devices if d.kind == "cpu" and d.host == host]
    where = f" on {host}" if host else ""
    if cpus:
        now_gb = cpus[0].memory_total_bytes / GB
        ram_gb = max(64.0, 2 * now_gb)
        grown = _grow_cpu(base, cpus[0], ram_gb, ctx)
        return [] if grown is None else [_Change("cpu_offload", f"{svc.entry.name}: {ram_gb:.0f} GB of RAM{where} "
                                                 f"instead of {now_gb:.0f} GB, for CPU offload", grown)]  # fmt: skip
    return [_Change("cpu_offload", f"{svc.entry.name}: add {ram_gb} GB of dual-channel DDR4-3200{where} (a typical "
                    f"{TYPICAL_CPU_MODEL} desktop) and offload the first layers to it", _add_cpu(base, host, ram_gb),
                    if_previous_fails=i > 0) for i, ram_gb in enumerate(TYPICAL_RAM_GB)]  # fmt: skip


def _grow_cpu(hw: Hardware, cpu: Device, ram_gb: float, ctx: Planning) -> Hardware | None:
    if hw.devices is not None:
        grown = cpu.model_copy(update={"memory_total_bytes": int(ram_gb * GB), "memory_free_bytes": int(ram_gb * GB),
                                       "spec": cpu.spec.model_copy(update={"vram_bytes": int(ram_gb * GB)})})  # fmt: skip
        return Hardware(spec=hw.spec, devices=tuple(grown if d.id == cpu.id else d for d in hw.devices))
    entries = list(hw.spec.devices or [])
    for i, entry in enumerate(entries):
        if entry.cpu is not None and entry.host == cpu.host and entry.cpu.ram_bytes is not None:
            sized = entry.cpu.model_copy(update={"ram_gb": ram_gb, "ram_gib": None, "free_gb": None, "free_gib": None})
            entries[i] = entry.model_copy(update={"cpu": sized})
            return Hardware(spec=hw.spec.model_copy(update={"devices": entries}), devices=None)
    return None


def _add_cpu(hw: Hardware, host: str | None, ram_gb: int) -> Hardware:
    entry = DeviceEntry(cpu=CpuEntry(ram_gb=ram_gb, model=TYPICAL_CPU_MODEL, ram_type=TYPICAL_RAM_TYPE,
                                     ram_channels=TYPICAL_RAM_CHANNELS), host=host)  # fmt: skip
    if hw.devices is None:
        return Hardware(spec=hw.spec.model_copy(update={"devices": [*(hw.spec.devices or []), entry]}), devices=None)
    cpu = devices_from_entries([entry], "advice", SourceLines()).devices[0]
    index = -1 - sum(1 for d in hw.devices if d.host == host and d.kind == "cpu")
    return Hardware(spec=hw.spec, devices=(*hw.devices, cpu.model_copy(update={"index": index})))


def _card_changes(svc: Resolved, ctx: Planning, hw: Hardware, host: str | None, short: int) -> list[_Change]:
    """One more card on the service's host, or one of its smallest card types swapped for a bigger one."""
    gpus = [d for d in ctx.devices if d.kind == "gpu" and d.host == host]
    chosen = ctx.chosen[svc.index]
    slowest = min((d.spec.mem_bandwidth_gb_per_s for d in chosen.devices), default=0.0) if chosen else 0.0
    where = f" on {host}" if host else ""

    def helps(card: GpuSpec, extra_bytes: int) -> bool:  # more memory for a misfit, more bandwidth for a slow one
        return extra_bytes >= short and (chosen is None or card.mem_bandwidth_gb_per_s > slowest)

    present = list({d.spec.id: d.spec for d in sorted(gpus, key=lambda d: -d.spec.vram_bytes)}.values())
    priced = _priced_cards(ctx.spec)
    out: list[_Change] = []
    adds = [c for c in present if helps(c, c.vram_bytes)]
    adds += [c for c in priced if helps(c, c.vram_bytes) and c.id not in {p.id for p in adds}][:MAX_CARDS]
    for card in adds:
        out.append(_Change("add_card", f"add an {card.name} ({_card_label(card, ctx.spec)}){where}",
                           _add_gpu(hw, card, host), _card_price(card, ctx.spec)))  # fmt: skip
    for old in sorted(present, key=lambda c: c.vram_bytes)[:MAX_REPLACED_TYPES]:
        device = max((d for d in gpus if d.spec.id == old.id), key=lambda d: d.index)
        bigger = [c for c in [*present, *priced] if c.id != old.id and helps(c, c.vram_bytes - old.vram_bytes)]
        for card in list({c.id: c for c in bigger}.values())[:MAX_CARDS]:
            new_price, old_price = _card_price(card, ctx.spec), _card_price(old, ctx.spec)
            extra = None if new_price is None else new_price - (old_price or 0.0)
            out.append(_Change("replace_card", f"replace the {old.name} ({device.id}) with an {card.name} "
                               f"({_card_label(card, ctx.spec)})", _replace_gpu(hw, device, card), extra))  # fmt: skip
    return out


def _priced_cards(spec: PlanSpec) -> list[GpuSpec]:
    """Catalog GPUs with a £/month (the plan's `prices:` or the catalog's rent), cheapest first."""
    cards = [c for c in all_gpus() if c.vram_bytes > 0 and _card_price(c, spec) is not None]
    return sorted(cards, key=lambda c: (_card_price(c, spec) or 0.0, -c.vram_bytes))


def _card_price(card: GpuSpec, spec: PlanSpec) -> float | None:
    return device_price(device_from_spec(card, 0), spec)


def _card_label(card: GpuSpec, spec: PlanSpec) -> str:
    price = _card_price(card, spec)
    return f"{card.vram_bytes / GiB:.0f} GiB" + ("" if price is None else f", £{price:.0f}/month")


def _add_gpu(hw: Hardware, card: GpuSpec, host: str | None) -> Hardware:
    if hw.devices is None:
        entry = DeviceEntry(gpu=card.name, host=host)
        return Hardware(spec=hw.spec.model_copy(update={"devices": [*(hw.spec.devices or []), entry]}), devices=None)
    index = 1 + max((d.index for d in hw.devices if d.host == host and d.kind == "gpu"), default=-1)
    return Hardware(spec=hw.spec, devices=(*hw.devices, device_from_spec(card, index, host=host)))


_CARD_KEYS = ("free_gb", "free_gib", "total_gb", "total_gib", "uuid", "bandwidth_gbs", "fp16_tflops",
              "compute_capability")  # fmt: skip


def _replace_gpu(hw: Hardware, old: Device, card: GpuSpec) -> Hardware:
    if hw.devices is not None:
        new = device_from_spec(card, old.index, host=old.host)
        return Hardware(spec=hw.spec, devices=tuple(new if d.id == old.id else d for d in hw.devices))
    entries = list(hw.spec.devices or [])
    position = _entry_of(entries, old)
    entry = entries[position]
    if entry.count > 1:  # one card of a `count:` entry: one fewer of them, one new card
        entries[position] = entry.model_copy(update={"count": entry.count - 1})
        entries.append(DeviceEntry(gpu=card.name, host=entry.host))
    else:
        entries[position] = entry.model_copy(update={"gpu": card.name, **dict.fromkeys(_CARD_KEYS)})
    return Hardware(spec=hw.spec.model_copy(update={"devices": entries}), devices=None)


def _entry_of(entries: list[DeviceEntry], device: Device) -> int:
    """The position of the `devices:` entry that made `device` (same rules as gpumix.hardware.entries)."""
    made = devices_from_entries(entries, "advice", SourceLines()).devices
    index_of = {d.id: i for i, d in enumerate(made)}
    position, count = 0, 0
    for i, entry in enumerate(entries):
        count += 1 if entry.cpu is not None else entry.count
        if index_of[device.id] < count:
            position = i
            break
    return position


def _drop_changes(svc: Resolved, ctx: Planning, hw: Hardware) -> list[_Change]:
    """Room made by dropping another (placed) service, the biggest first."""
    placed = [(sum(opt.memory_bytes), other) for other, opt in zip(ctx.services, ctx.chosen, strict=True)
              if opt is not None and other is not svc]  # fmt: skip
    out = []
    for memory, other in sorted(placed, key=lambda item: -item[0])[:MAX_DROPS]:
        name = other.entry.name
        services = [s.model_copy(update={"fallback": None}) if s.fallback == name else s
                    for s in hw.spec.services if s.name != name]  # fmt: skip
        spec = hw.spec.model_copy(update={"services": services})
        out.append(_Change("drop_service", f"drop service {name} (frees {memory / GB:.1f} GB) to make room for "
                           f"{svc.entry.name}", Hardware(spec=spec, devices=hw.devices)))  # fmt: skip
    return out


# ------------------------------------------------------------------------------------------------ helpers


def _host_of(svc: Resolved, ctx: Planning) -> str | None:
    """The host a change goes to: the service's pinned host, else the host whose GPUs offer it the most memory."""
    if svc.entry.host is not None:
        return svc.entry.host
    hosts = by_host(service_pool(svc.entry, ctx.devices))
    if not hosts:
        return None
    return max(hosts, key=lambda h: sum(usable_bytes(d) for d in hosts[h] if d.kind == "gpu"))


def _shortfall_bytes(svc: Resolved, ctx: Planning) -> int:
    """Memory the service lacks next to what the plan put on the devices: its closest option's shortfall, or for an
    LLM a layer split over all GPUs of its roomiest host, whichever is less."""
    used: dict[str, int] = {}
    for opt in ctx.chosen:
        for d, m in zip(opt.devices, opt.memory_bytes, strict=True) if opt is not None else ():
            used[d.id] = used.get(d.id, 0) + m

    def free(d: Device) -> int:
        return usable_bytes(d) - used.get(d.id, 0)

    shorts = [sum(max(m - free(d), 0) for d, m in zip(o.devices, o.memory_bytes, strict=True))
              for o in ctx.options[svc.index]]  # fmt: skip
    if svc.model.kind == "llm" and ctx.devices:
        gpus = roomiest_gpus(svc, ctx.devices)
        if gpus:
            with contextlib.suppress(GpumixError):  # the estimator cannot split it there: the options' figure stands
                shorts.append(max(layer_split_need_bytes(svc, gpus, ctx.calibration) - sum(free(d) for d in gpus), 0))
    return min(shorts, default=0)
