"""Anti-pattern warnings with stable codes. Codes never change meaning; new checks get new numbers.

| code   | slug                      | fires when                                                                     |
|--------|---------------------------|--------------------------------------------------------------------------------|
| GPX001 | tp-mismatched-cards       | tensor parallel over cards of different types (each layer waits for the slowest; vLLM caps KV by the smallest) |
| GPX002 | pp-mismatched-partition   | pipeline parallel over mismatched cards: needs the speed-aware VLLM_PP_LAYER_PARTITION gpumix sets (even stages stall on the slow card) |
| GPX003 | slow-main-gpu             | the first (main) device of a multi-device service is not its fastest          |
| GPX004 | split-fits-one-card       | a model is split although it fits one card (and would be faster there)          |
| GPX005 | service-steals-llm-kv     | a small service shares the LLM's card while another card had room for it        |
| GPX006 | replicas-crowd-out        | replicas of one model occupy cards another service would use better             |
| GPX007 | containers-see-all-gpus   | containers get `--gpus all` / `count: all` instead of pinned device_ids        |
| GPX008 | mixed-driver-branches     | cards on one host report different driver branches                             |
| GPX009 | slow-link-split           | a split/TP/PP crosses a slow link (≤ PCIe Gen2 x4 class, < 4 GB/s) or the network |
| GPX010 | over-free-memory          | planned memory is above a device's free memory − margin                        |
| GPX011 | tp-across-sockets         | tensor parallel across CPU sockets (SYS topology) without NVLink               |
| GPX012 | slo-missed                | a service's predicted speed misses its SLO                                      |
| GPX013 | cpu-offload               | layers run from system RAM (slow): says how much faster more VRAM would be     |
| GPX014 | service-unplaced          | a service could not be placed (see the plan's reasons)                          |
| GPX015 | device-oversubscribed     | the services on one card would need more than its bandwidth/compute if all busy at once (declare `load:`) |
| GPX016 | price-unknown             | a card the plan uses has no £/month (catalog or `prices:`), so the plan gives no cost |
| GPX017 | kv-below-concurrency      | an LLM's KV pool holds fewer full-context sequences than its concurrency: concurrency × context > kv_cache_tokens (predictions use what it holds) |
| GPX018 | psu-undersized            | a host's GPUs (board power) + CPU + rest exceed its declared `psu_w`, steady or with GPU transients (x1.33) |
| GPX019 | driver-too-old            | a card's `driver:` is older than the first CUDA toolkit for its architecture needs (Blackwell >= 570.26) |
| GPX020 | cuda-rocm-split           | one split over CUDA and ROCm (or Metal) cards: one llama.cpp build / vLLM process runs one backend |
| GPX021 | duplicate-model-crowds-out | two services serve the same model on different cards of a host while another service found no room |
| GPX022 | low-memory-setting        | an image service runs its engine's low-memory setting (flash attention, tiled VAE decode) to fit: less memory, slower images by an unmeasured amount |
| GPX023 | rpc-no-auth               | a llama.cpp split across hosts runs ggml-rpc-server, which has no authentication |

GPX018-GPX021 live in gpumix.plan.lint_platform.
"""

from __future__ import annotations

from typing import Literal

from gpumix.errors import GpumixError
from gpumix.estimate.memory import service_memory, usable_bytes
from gpumix.estimate.speed import pcie_gb_per_s
from gpumix.estimate.types import Links
from gpumix.hardware.spec import Device
from gpumix.plan import lint_platform
from gpumix.plan.candidates import Option, llm_option
from gpumix.plan.fleet import device_pcie
from gpumix.plan.planning import Planning
from gpumix.plan.resolve import Resolved
from gpumix.plan.result import Warning_
from gpumix.plan.score import slo_checks
from gpumix.units import GB

SLOW_LINK_GB_PER_S = 4.0  # PCIe Gen2 x4 = 2 GB/s, Gen3 x4 = 3.9 GB/s: below this a split's hops dominate


Severity = Literal["info", "warning", "error"]


def _w(code: str, slug: str, message: str, service: str | None = None, severity: Severity = "warning") -> Warning_:
    return Warning_(code=f"{code}-{slug}", message=message, service=service, severity=severity)


def _low_memory_check(svc: Resolved, opt: Option) -> list[Warning_]:
    """GPX022: the image service runs the catalog's low-memory setting; says what it saves and that its speed is the
    default setting's prediction."""
    spec = svc.model.service_memory
    if opt.memory_setting != "low" or spec is None or spec.low_memory is None:
        return []
    is_gpu = opt.devices[0].kind == "gpu"
    default = service_memory(svc.model, is_gpu).total_bytes
    low = opt.memory_bytes[0]
    name = svc.entry.name
    asked = "as its `memory: low` asks" if svc.entry.memory == "low" else "to make room for the other services (at its defaults something else would not fit, or an LLM would hold less KV)"
    return [_w("GPX022", "low-memory-setting",
               f"{name}: {svc.model.name} runs sd-server's low-memory setting ({' '.join(spec.low_memory.args)}) "
               f"{asked}: {low / GB:.1f} GB on {opt.devices[0].id} instead of {default / GB:.1f} GB. Its images/s is "
               "predicted for the default setting; the tiled VAE decode makes each image slower by an amount not "
               "measured. `memory: default` forces the default (another service may then not fit)", name, "info")]  # fmt: skip


def lint(ctx: Planning) -> list[Warning_]:
    """Every warning for a planning result (its plan's own `warnings` are not read)."""
    plan = ctx.plan
    out: list[Warning_] = []
    for svc, opt in zip(ctx.services, ctx.chosen, strict=True):
        name = svc.entry.name
        if opt is None:
            out.append(_w("GPX014", "service-unplaced", f"{name}: not placed — {svc.model.name} does not fit "
                          "(see reasons)", name, "error"))  # fmt: skip
            continue
        out.extend(_service_checks(svc, opt, ctx))
        out.extend(_low_memory_check(svc, opt))
        out.extend(lint_platform.service_checks(svc, opt))
    out.extend(_device_checks(ctx))
    out.extend(lint_platform.plan_checks(ctx))
    unpriced = sorted({d.name for d in plan.devices if d.kind == "gpu" and d.memory_planned_bytes > 0
                       and d.gbp_per_month is None})  # fmt: skip
    if unpriced:
        example = unpriced[0]
        out.append(_w("GPX016", "price-unknown",
                      f"no £/month for {', '.join(unpriced)}, so the plan gives no cost; add e.g. "
                      f"`prices: {{{example}: {{gbp_per_month: N}}}}` to the plan file", severity="info"))  # fmt: skip
    if ctx.spec.runtime.containers and ctx.spec.runtime.container_gpus == "all":
        out.append(_w("GPX007", "containers-see-all-gpus",
                      "containers would see all GPUs (`--gpus all`): a service can then allocate on the LLM's card; "
                      "pin each with compose device_ids / CUDA_VISIBLE_DEVICES (gpumix launch does)"))  # fmt: skip
    return out


def _service_checks(svc: Resolved, opt: Option, ctx: Planning) -> list[Warning_]:
    return [
        *_card_mix(svc, opt),
        *_split_of_one_card(svc, opt, ctx),
        *_links(svc, opt, ctx),
        *_offload(svc, opt, ctx),
        *_slo(svc, opt),
        *_co_location(svc, opt, ctx),
        *_kv_below_concurrency(svc, opt),
    ]


def _kv_below_concurrency(svc: Resolved, opt: Option) -> list[Warning_]:
    """GPX017: the KV pool(s) hold fewer full-context sequences than the streams they serve."""
    if svc.model.kind != "llm" or not opt.kv_tokens:
        return []
    context = svc.workload.context
    short = [(p, held, n) for p, (tokens, n) in enumerate(zip(opt.kv_tokens, opt.streams, strict=True))
             if (held := tokens // context) < n]  # fmt: skip
    if not short:
        return []
    name = svc.entry.name
    if opt.mode == "replica":
        parts = [f"the replica on {opt.devices[p].id} holds {held} of its {n} streams" for p, held, n in short]
        what = "; ".join(parts) + f" at {context:,} tokens each"
    else:
        (_, held, n), tokens = short[0], opt.kv_tokens[0]
        what = (f"KV for {tokens:,} tokens holds {held} sequence{'s' if held != 1 else ''} of {context:,} tokens at "
                f"once, not the {n} its concurrency asks ({n} × {context:,} = {n * context:,} tokens)")  # fmt: skip
    engine = opt.workloads[0].engine
    if engine == "vllm":
        then = "longer together, vLLM preempts and re-queues requests"
    else:
        then = ("longer together, llama-server fails the running requests ('Context size has been exceeded'); "
                "`kv_unified: false` reserves every slot's context instead")  # fmt: skip
    held_total = sum(min(t // context, n) for t, n in zip(opt.kv_tokens, opt.streams, strict=True))
    cards = ", ".join(dict.fromkeys(d.id for d in opt.devices))
    return [_w("GPX017", "kv-below-concurrency",
               f"{name}: {what}. Predictions use {held_total} stream{'s' if held_total != 1 else ''}. Shorter requests "
               "share the pool; when they grow "
               f"{then}. More KV: free memory on {cards} (move a service off it), a shorter context, or a smaller "
               "kv_cache_dtype", name)]  # fmt: skip


def _card_mix(svc: Resolved, opt: Option) -> list[Warning_]:
    """GPX001-GPX003: tensor / pipeline parallel over mismatched cards, the slower card first."""
    out: list[Warning_] = []
    name = svc.entry.name
    gpus = [d for d in opt.devices if d.kind == "gpu"]
    mismatched = len({d.spec.id for d in gpus}) > 1
    if opt.mode == "tensor_parallel" and mismatched:
        out.append(_w("GPX001", "tp-mismatched-cards",
                      f"{name}: tensor parallel over {' + '.join(d.name for d in gpus)}: every layer waits for the "
                      "slower card and vLLM sizes KV by the smallest; use a layer split or pipeline parallel", name))  # fmt: skip
    if opt.mode == "pipeline_parallel" and mismatched:
        part = ",".join(str(n) for n in opt.layers)
        out.append(_w("GPX002", "pp-mismatched-partition",
                      f"{name}: pipeline parallel over mismatched cards; gpumix sets VLLM_PP_LAYER_PARTITION={part} "
                      "(speed-aware). Without it vLLM splits layers evenly and the slow card stalls the pipeline",
                      name, "info"))  # fmt: skip
    if len(gpus) > 1 and opt.mode != "replica":
        fastest = max(gpus, key=lambda d: d.spec.mem_bandwidth_gb_per_s)
        if gpus[0].spec.mem_bandwidth_gb_per_s < fastest.spec.mem_bandwidth_gb_per_s:
            out.append(_w("GPX003", "slow-main-gpu",
                          f"{name}: device {gpus[0].id} ({gpus[0].name}) is first (main GPU) but "
                          f"{fastest.name} is faster; put the fastest card first", name))  # fmt: skip
    return out


def _split_of_one_card(svc: Resolved, opt: Option, ctx: Planning) -> list[Warning_]:
    """GPX004: a split of a model that fits one of its cards."""
    if opt.mode not in ("layer_split", "pipeline_parallel", "tensor_parallel"):
        return []
    gpus = [d for d in opt.devices if d.kind == "gpu"]
    singles = [o for o in ctx.options[svc.index] if o.mode == "single" and o.fits()] or _singles(svc, gpus, ctx)
    if not singles:
        return []
    best = max(singles, key=lambda o: o.speed)
    return [_w("GPX004", "split-fits-one-card",
               f"{svc.entry.name}: split over {len(opt.devices)} devices although it fits {best.devices[0].name} alone "
               f"(one card: {best.decode:.1f} tok/s one stream vs {opt.decode:.1f} split)", svc.entry.name,
               "info" if (opt.speed or 0) > best.speed else "warning")]  # fmt: skip


def _links(svc: Resolved, opt: Option, ctx: Planning) -> list[Warning_]:
    """GPX009 / GPX011 / GPX023: a split over a slow link or the network (RPC without authentication); tensor parallel over PCIe or across sockets."""
    out: list[Warning_] = []
    name, devs = svc.entry.name, list(opt.devices)
    if opt.mode in ("layer_split", "pipeline_parallel", "tensor_parallel", "cpu_offload") and len(devs) > 1:
        slow = _slow_link(devs, ctx)
        if slow:
            out.append(_w("GPX009", "slow-link-split", f"{name}: {slow}", name))
        if svc.engine == "llama.cpp" and len({d.host for d in devs}) > 1:
            out.append(_w("GPX023", "rpc-no-auth",
                          f"{name}: the split reaches its other hosts through ggml-rpc-server, which has no "
                          "authentication: anyone who reaches its port can run tensors on that device and read its "
                          "memory; keep it on a private cluster network (`up --ray` binds it to the node address)", name))  # fmt: skip
    if opt.mode != "tensor_parallel":
        return out
    socks = {ctx.sockets.get(d.id) for d in devs} - {None}
    links = ctx.spec.links
    topology = links.topology if links and links.topology else ("SYS" if len(socks) > 1 else None)
    nvlink = bool(links and links.nvlink)
    if topology == "SYS" and not nvlink:
        out.append(_w("GPX011", "tp-across-sockets",
                      f"{name}: tensor parallel across CPU sockets (SYS) without NVLink: two all-reduces per layer "
                      "cross the socket link; prefer pipeline parallel or cards on one socket", name))  # fmt: skip
    elif not nvlink:
        out.append(_w("GPX009", "slow-link-split",
                      f"{name}: tensor parallel over PCIe without NVLink: 2 all-reduces per layer; expect "
                      "~1.6-1.7x of one card, not 2x (pipeline parallel is less link-sensitive)", name, "info"))  # fmt: skip
    return out


def _offload(svc: Resolved, opt: Option, ctx: Planning) -> list[Warning_]:
    """GPX013: layers in system RAM, and whether more VRAM would keep them all on GPUs."""
    if opt.mode != "cpu_offload":
        return []
    gpu_only = [o for o in ctx.options[svc.index] if o.mode != "cpu_offload" and o.decode]
    ram_gb = opt.memory_bytes[0] / GB
    return [_w("GPX013", "cpu-offload",
               f"{svc.entry.name}: {opt.layers[0]} of {sum(opt.layers)} layers ({ram_gb:.1f} GB) run from system RAM; "
               f"predicted {opt.decode:.1f} tok/s" + ("" if gpu_only else
               "; more VRAM (a bigger second card) would keep it all on GPUs"), svc.entry.name, "info")]  # fmt: skip


def _singles(svc: Resolved, gpus: list[Device], ctx: Planning) -> list[Option]:
    """One-card placements of the service on each card of its group (when its mode was forced, none were made)."""
    out = []
    for d in gpus:
        try:
            opt = llm_option(svc, "single", [d], (), Links(), ctx.calibration)
        except GpumixError:
            continue
        if opt.fits():
            out.append(opt)
    return out


def _slo(svc: Resolved, opt: Option) -> list[Warning_]:
    out = []
    for check in slo_checks(svc, opt):
        if not check.met:
            by = "" if check.margin is None else f" (missed by {-check.margin * 100:.0f}%)"
            out.append(_w("GPX012", "slo-missed", f"{svc.entry.name}: {check.metric} predicted "
                          f"{check.predicted} vs target {check.target}{by}", svc.entry.name))  # fmt: skip
    return out


def _co_location(svc: Resolved, opt: Option, ctx: Planning) -> list[Warning_]:
    """GPX005 / GPX006: card sharing that costs an LLM its KV space, or replicas that crowd others out."""
    out: list[Warning_] = []
    name = svc.entry.name
    mine = {d.id for d in opt.devices}
    if svc.model.kind != "llm":
        for other, other_opt in zip(ctx.services, ctx.chosen, strict=True):
            if other is svc or other_opt is None or other.model.kind != "llm":
                continue
            shared = mine & {d.id for d in other_opt.devices}
            if not shared:
                continue
            elsewhere = [o for o in ctx.options[svc.index] if not ({d.id for d in o.devices} & shared)
                         and _fits_beside(o, ctx)]  # fmt: skip
            if elsewhere:
                out.append(_w("GPX005", "service-steals-llm-kv",
                              f"{name}: shares a card with LLM {other.entry.name}, taking "
                              f"{sum(opt.memory_bytes) / GB:.1f} GB it could use for KV cache, while "
                              f"{elsewhere[0].devices[0].name} had room", name))  # fmt: skip
    if opt.mode == "replica":
        for other, other_opt in zip(ctx.services, ctx.chosen, strict=True):
            if other is svc:
                continue
            best = max((o.speed for o in ctx.options[other.index] if o.fits()), default=0.0)
            if other_opt is None or (best and other_opt.speed < best * 0.9):
                out.append(_w("GPX006", "replicas-crowd-out",
                              f"{name}: {len(opt.devices)} replicas of {svc.model.name} take cards that "
                              f"{other.entry.name} would use better", name))  # fmt: skip
                break
    return out


def _fits_beside(option: Option, ctx: Planning) -> bool:
    """Would `option` fit next to what the plan already put on its devices? (LLM KV pools as the assignment placed
    them, before they grew into the cards' leftover.)"""
    used: dict[str, int] = {}
    for o in ctx.assigned or ctx.chosen:
        if o is None:
            continue
        for d, m in zip(o.devices, o.memory_bytes, strict=True):
            used[d.id] = used.get(d.id, 0) + m
    return all(
        used.get(d.id, 0) + m <= usable_bytes(d)
        for d, m in zip(option.devices, option.memory_bytes, strict=True)
    )


def _slow_link(devs: list[Device], ctx: Planning) -> str | None:
    if len({d.host for d in devs}) > 1:
        return "the split crosses hosts: every token's activations go over the network"
    for d in devs:
        if d.kind != "gpu":
            continue
        gen, lanes = device_pcie(ctx.spec.links, d)
        rate = pcie_gb_per_s(gen, lanes)
        if rate < SLOW_LINK_GB_PER_S:
            return (f"device {d.id} ({d.name}) sits on a PCIe Gen{gen} x{lanes} link ({rate:.1f} GB/s); "
                    "splits over it pay for every hop — move it to an x8/x16 slot")  # fmt: skip
    return None


def _device_checks(ctx: Planning) -> list[Warning_]:
    plan = ctx.plan
    out: list[Warning_] = []
    for dev, planned in zip(ctx.devices, plan.devices, strict=True):
        limit = usable_bytes(dev)
        if planned.memory_planned_bytes > limit:
            out.append(_w("GPX010", "over-free-memory",
                          f"device {dev.id} ({dev.name}): planned {planned.memory_planned_bytes / GB:.1f} GB is "
                          f"above free − margin ({limit / GB:.1f} GB)", severity="error"))  # fmt: skip
    for dev, planned in zip(ctx.devices, plan.devices, strict=True):
        busy = max(planned.bandwidth_utilisation, planned.compute_utilisation)
        if busy > 1.0 + 1e-9:
            names = [s.name for s in plan.services_on(dev.id)]
            out.append(_w("GPX015", "device-oversubscribed",
                          f"device {dev.id} ({dev.name}): "
                          f"{', '.join(names)} would need {busy:.1f}x its bandwidth if all were busy at once; "
                          "they slow each other down — declare each service's `load:` (busy share) to check",
                          severity="info"))  # fmt: skip
    by_host: dict[str | None, set[str]] = {}
    for dev in ctx.devices:
        if dev.driver_version:
            by_host.setdefault(dev.host, set()).add(dev.driver_version.split(".")[0])
    for host, branches in by_host.items():
        if len(branches) > 1:
            where = f" on host {host}" if host else ""
            out.append(_w("GPX008", "mixed-driver-branches",
                          f"cards{where} report driver branches {', '.join(sorted(branches))}: one machine runs one "
                          "driver; install the same branch for all cards"))  # fmt: skip
    return out
