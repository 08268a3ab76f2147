"""Memory and speed of one model under one placement: the estimator's single entry point, `estimate`."""

from __future__ import annotations

import math
from collections.abc import Callable

from gpumix.errors import GpumixError
from gpumix.estimate.calibration import Calibration, default_backend, default_calibration
from gpumix.estimate.memory import (
    layer_params,
    memory_for_layers,
    non_layer_params,
    sequences_held,
    service_memory,
    usable_bytes,
)
from gpumix.estimate.speed import (
    GB,
    achieved_bandwidth_gb_per_s,
    achieved_flops,
    allreduce_s,
    decode_alu_s,
    decode_bytes_on_device,
    device_fixed_overhead_s,
    layer_split_hop_s,
    link_gb_per_s,
    peak_bandwidth_gb_per_s,
    prefill_alu_s,
)
from gpumix.estimate.types import DeviceEstimate, Estimate, Links, MemoryBreakdown, Placement, Workload
from gpumix.hardware.spec import Device
from gpumix.kinds import PlacementMode
from gpumix.models.spec import ModelSpec, QuantSpec


def estimate(
    model: ModelSpec,
    quant: QuantSpec,
    placement: Placement,
    workload: Workload | None = None,
    links: Links | None = None,
    calibration: Calibration | None = None,
    backend: str | None = None,
) -> Estimate:
    """Memory per device and decode/prefill speed for `model` in `quant` placed as `placement`."""
    workload = workload or Workload()
    links = links or Links()
    cal = calibration or default_calibration()
    if not placement.devices:
        raise GpumixError("no devices to place the model on", hint="give at least one --gpu or --cpu")
    if model.kind != "llm" or model.n_layers == 0:
        return _service_estimate(model, placement)
    if placement.mode == "tensor_parallel":
        result = _tensor_parallel(model, quant, placement, workload, links, cal, backend)
    elif placement.mode == "replica":
        result = _replicas(model, quant, placement, workload, links, cal, backend)
    else:
        result = _layer_pipeline(model, quant, placement, workload, links, cal, backend)
    derived = sorted({d.spec.name for d in placement.devices if d.kind == "gpu" and d.spec.matrix_tflops_derived})
    if derived:
        result = result.model_copy(update={"notes": (*result.notes, (
            f"prefill compute of {', '.join(derived)} derived from compute units × clock (no published FP16 figure)"
        ))})  # fmt: skip
    return with_bands(result, placement, workload, cal, backend)


def with_bands(
    result: Estimate, placement: Placement, workload: Workload, cal: Calibration, backend: str | None
) -> Estimate:
    """`result` with its 80 % intervals: the calibration's band for the placement's backend (all backends pooled
    when the devices mix backends) applied to each speed. The decode upper bound is capped at the bandwidth ceiling
    (bytes ÷ peak bandwidth), and the aggregate's at the same factor, so no range promises what physics forbids."""
    backends = {backend or default_backend(d.spec) for d in placement.devices}
    name = backends.pop() if len(backends) == 1 else None
    decode_band, prefill_band = cal.band("decode", name), cal.band("prefill", name)
    if decode_band is None or prefill_band is None or result.decode_tokens_per_s <= 0:
        return result
    decode = result.decode_tokens_per_s
    ceiling = result.bandwidth_bound_tokens_per_s / decode  # >= 1: the estimator never beats the bound
    up, down = min(decode_band.high, ceiling), min(decode_band.low, ceiling)
    prefill = result.prefill_tokens_per_s
    prompt = workload.prompt_tokens
    return result.model_copy(update={
        "decode_tokens_per_s_low": decode * down, "decode_tokens_per_s_high": decode * up,
        "aggregate_tokens_per_s_low": result.aggregate_tokens_per_s * down,
        "aggregate_tokens_per_s_high": result.aggregate_tokens_per_s * up,
        "prefill_tokens_per_s_low": prefill * prefill_band.low, "prefill_tokens_per_s_high": prefill * prefill_band.high,
        "ttft_s_low": prompt / (prefill * prefill_band.high) + 1 / (decode * up),
        "ttft_s_high": prompt / (prefill * prefill_band.low) + 1 / (decode * down),
    })  # fmt: skip


def layers_for(model: ModelSpec, placement: Placement) -> tuple[int, ...]:
    """Layer counts per device: as given, all on one device for `single`, else proportional to free memory."""
    n = model.n_layers
    if placement.mode == "single" or len(placement.devices) == 1:
        return (n,) + (0,) * (len(placement.devices) - 1)
    if placement.layers:
        if len(placement.layers) != len(placement.devices) or sum(placement.layers) != n:
            raise GpumixError(
                f"layer split {list(placement.layers)} does not cover the model's {n} layers on "
                f"{len(placement.devices)} devices",
                hint="give one count per device, summing to the layer count",
            )
        return placement.layers
    return proportional_layers(n, [d.memory_free_bytes for d in placement.devices])


def proportional_layers(n_layers: int, weights: list[float]) -> tuple[int, ...]:
    """Largest-remainder rounding of n_layers in proportion to `weights` (llama.cpp's default -ts)."""
    total = sum(weights) or 1.0
    raw = [n_layers * w / total for w in weights]
    counts = [math.floor(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: raw[i] - counts[i], reverse=True)[: n_layers - sum(counts)]:
        counts[i] += 1
    return tuple(counts)


def _layer_ranges(layers: tuple[int, ...]) -> list[list[int]]:
    ranges, start = [], 0
    for count in layers:
        ranges.append(list(range(start, start + count)))
        start += count
    return ranges


def _device_estimate(
    device: Device, layers: int, memory: MemoryBreakdown, decode_s: float, bound_s: float
) -> DeviceEstimate:
    total = memory.total_bytes
    usable = usable_bytes(device)  # free − margin: the planner's definition of "fits" too
    shortfall = max(total - usable, 0)
    return DeviceEstimate(
        device_index=device.index,
        name=device.name,
        layers=layers,
        memory=memory,
        memory_bytes=total,
        memory_free_bytes=device.memory_free_bytes,
        memory_usable_bytes=usable,
        fits=shortfall == 0,
        shortfall_bytes=shortfall,
        decode_s_per_token=decode_s,
        bandwidth_bound_s_per_token=bound_s,
    )


def _stage_step_s(
    model: ModelSpec,
    quant: QuantSpec,
    device: Device,
    layer_ids: list[int],
    holds_output: bool,
    workload: Workload,
    cal: Calibration,
    backend: str | None,
    batch: int,
    depth: float,
) -> float:
    """Time for one decode step of `batch` sequences on one stage: bandwidth-, ALU- or compute-bound, plus overhead."""
    if not layer_ids and not holds_output:
        return 0.0
    weight_and_kv_1 = decode_bytes_on_device(model, quant, layer_ids, holds_output, workload, depth)
    kv_only_1 = weight_and_kv_1 - decode_bytes_on_device(model, quant, layer_ids, holds_output, workload, 0)
    bytes_read = weight_and_kv_1 + (batch - 1) * kv_only_1
    bw = achieved_bandwidth_gb_per_s(device, quant, cal, backend) * GB
    flops_per_token = 2 * layer_params(model) * len(layer_ids) * (model.active_params / model.params_total)
    if holds_output:
        flops_per_token += 2 * non_layer_params(model) / (1 if model.tied_embeddings else 2)
    flops = achieved_flops(device, quant, cal, backend)
    compute_s = batch * flops_per_token / flops if flops > 0 else 0.0
    overhead = device_fixed_overhead_s(device, len(layer_ids), workload, cal, backend)
    alu_s = decode_alu_s(model, quant, device, layer_ids, holds_output, cal)
    return max(bytes_read / bw, alu_s, compute_s) + overhead


def _prefill_s(
    model: ModelSpec,
    quant: QuantSpec,
    devices: list[Device],
    ranges: list[list[int]],
    workload: Workload,
    cal: Calibration,
    backend: str | None,
    tp: int = 1,
    links: Links | None = None,
) -> float:
    """Time to process `prompt_tokens` in ubatches: matmul FLOPs + attention FLOPs, weights re-read per ubatch.

    With partial offload, llama.cpp runs large batches of CPU-resident layers on the GPU, copying their weights
    over PCIe once per ubatch (its default op offload); a CPU layer costs the cheaper of the two ways."""
    n = workload.prompt_tokens
    chunks = math.ceil(n / workload.ubatch)
    total = 0.0
    last = len(devices) - 1
    gpus = [d for d in devices if d.kind == "gpu"]
    best_gpu_flops = max((achieved_flops(d, quant, cal, backend) for d in gpus), default=0.0)
    for pos, (device, ids) in enumerate(zip(devices, ranges, strict=True)):
        if not ids and pos != last:
            continue
        params = layer_params(model) * len(ids) * (model.active_params / model.params_total) / tp
        attn_flops = 4 * len(ids) * model.n_heads * model.head_dim * n * n / 2 / tp  # QK^T and AV, causal
        flops = 2 * params * n + attn_flops
        if pos == last:
            flops += 2 * model.vocab_size * model.hidden_size / tp  # logits of the last token only
        peak = achieved_flops(device, quant, cal, backend)
        compute_s = flops / peak if peak > 0 else float("inf")
        compute_s += prefill_alu_s(params, n, quant, device, cal)
        weight_bytes = decode_bytes_on_device(model, quant, ids, pos == last, workload, 0) / tp
        weights_s = weight_bytes / (achieved_bandwidth_gb_per_s(device, quant, cal, backend) * GB)
        here = compute_s + chunks * (weights_s + device_fixed_overhead_s(device, len(ids), workload, cal, backend))
        if device.kind == "cpu" and best_gpu_flops > 0:
            upload_s = weight_bytes / (link_gb_per_s(links or Links(), pos) * GB)
            here = min(here, flops / best_gpu_flops + chunks * upload_s)
        total += here
    return total


def _layer_pipeline(
    model: ModelSpec,
    quant: QuantSpec,
    placement: Placement,
    workload: Workload,
    links: Links,
    cal: Calibration,
    backend: str | None,
) -> Estimate:
    """single / layer_split / pipeline_parallel / cpu_offload: each device holds a contiguous range of layers."""
    devices = list(placement.devices)
    layers = layers_for(model, placement)
    ranges = _layer_ranges(layers)
    used = [i for i, count in enumerate(layers) if count > 0]
    last = used[-1] if used else len(devices) - 1
    depth = workload.context / 2
    multi = len(used) > 1
    uses_nccl = placement.mode == "pipeline_parallel" and workload.engine == "vllm"
    per_device: list[DeviceEstimate] = []
    stage_1: list[float] = []
    bound_s = 0.0
    for pos, device in enumerate(devices):
        ids = ranges[pos]
        holds_output = pos == last
        memory = memory_for_layers(
            model, quant, workload, ids,
            holds_output=holds_output, holds_input=pos == (used[0] if used else 0),
            device=device, uses_nccl=uses_nccl, world_size=len(used) if uses_nccl else 1,
        )  # fmt: skip
        step = _stage_step_s(model, quant, device, ids, holds_output, workload, cal, backend, 1, depth)
        dev_bytes = decode_bytes_on_device(model, quant, ids, holds_output, workload, depth)
        dev_bound = dev_bytes / (peak_bandwidth_gb_per_s(device, cal) * GB)
        bound_s += dev_bound
        stage_1.append(step)
        per_device.append(_device_estimate(device, len(ids), memory, step, dev_bound))
    hops = sum(layer_split_hop_s(model, links, cal, pos) for pos in used[1:])
    token_s = sum(stage_1) + hops + cal.fixed_overhead_s
    aggregate = _pipelined_aggregate(model, quant, devices, ranges, last, workload, links, cal, backend, used)
    prefill_s = _prefill_s(model, quant, devices, ranges, workload, cal, backend, links=links)
    notes = []
    if multi:
        notes.append(f"layer split {list(layers)}: one stream's token passes every device in turn")
    return _assemble(placement.mode, per_device, token_s, aggregate, prefill_s, workload, bound_s, hops, notes)


def _assemble(
    mode: PlacementMode,
    per_device: list[DeviceEstimate],
    token_s: float,
    aggregate: float,
    prefill_s: float,
    workload: Workload,
    bound_s: float,
    link_s: float,
    notes: list[str],
) -> Estimate:
    """One stream decodes a token every `token_s`; `aggregate` streams together can't do worse than one."""
    return Estimate(
        fits=all(d.fits for d in per_device),
        mode=mode,
        devices=tuple(per_device),
        decode_tokens_per_s=1.0 / token_s,
        aggregate_tokens_per_s=max(aggregate, 1.0 / token_s),
        prefill_tokens_per_s=workload.prompt_tokens / prefill_s,
        ttft_s=prefill_s + token_s,
        bandwidth_bound_tokens_per_s=1.0 / bound_s,
        link_s_per_token=link_s,
        notes=tuple(notes),
    )


def _pipelined_aggregate(
    model: ModelSpec,
    quant: QuantSpec,
    devices: list[Device],
    ranges: list[list[int]],
    last: int,
    workload: Workload,
    links: Links,
    cal: Calibration,
    backend: str | None,
    used: list[int],
) -> float:
    """Tokens/s over the sequences the KV holds (`sequences_held`). With several stages, micro-batches pipeline: the slowest stage sets
    the pace (VISION.md: the best split for many streams balances stage times)."""
    batch = sequences_held(workload)
    depth = workload.context / 2
    stages = max(len(used), 1)
    micro = max(batch // stages, 1) if stages > 1 and batch >= stages else batch
    steps = [
        _stage_step_s(model, quant, devices[pos], ranges[pos], pos == last, workload, cal, backend, micro, depth)
        for pos in used
    ]
    hops = [layer_split_hop_s(model, links, cal, pos, micro) for pos in used[1:]]
    if stages > 1 and batch >= stages:
        return micro / (max(steps + hops) + cal.fixed_overhead_s / stages)
    return batch / (sum(steps) + sum(hops) + cal.fixed_overhead_s)


def _tensor_parallel(
    model: ModelSpec,
    quant: QuantSpec,
    placement: Placement,
    workload: Workload,
    links: Links,
    cal: Calibration,
    backend: str | None,
) -> Estimate:
    """Every layer is sharded over all devices: each step waits for the slowest device, plus two all-reduces
    per layer (attention and MLP outputs). KV is sharded by heads; vLLM caps KV by the smallest card."""
    devices = list(placement.devices)
    tp = len(devices)
    ids = list(range(model.n_layers))
    depth = workload.context / 2
    per_device: list[DeviceEstimate] = []
    steps_1: list[float] = []
    bound_s = 0.0
    for device in devices:
        memory = memory_for_layers(
            model, quant, workload, ids, holds_output=True, holds_input=True,
            device=device, tensor_parallel=tp, uses_nccl=tp > 1,
        )  # fmt: skip
        dev_bytes = decode_bytes_on_device(model, quant, ids, True, workload, depth) / tp
        bw = achieved_bandwidth_gb_per_s(device, quant, cal, backend) * GB
        overhead = device_fixed_overhead_s(device, model.n_layers, workload, cal, backend)
        step = max(dev_bytes / bw, decode_alu_s(model, quant, device, ids, True, cal) / tp) + overhead
        steps_1.append(step)
        dev_bound = dev_bytes / (peak_bandwidth_gb_per_s(device, cal) * GB)
        bound_s = max(bound_s, dev_bound)
        per_device.append(_device_estimate(device, model.n_layers, memory, step, dev_bound))
    comm_1 = 2 * model.n_layers * allreduce_s(model, links, tp, 1, range(tp))
    token_s = max(steps_1) + comm_1 + cal.fixed_overhead_s
    batch = sequences_held(workload)
    batch_steps = []
    for device in devices:
        full = decode_bytes_on_device(model, quant, ids, True, workload, depth)
        weights = decode_bytes_on_device(model, quant, ids, True, workload, 0)
        bytes_b = (weights + batch * (full - weights)) / tp
        bw = achieved_bandwidth_gb_per_s(device, quant, cal, backend) * GB
        flops = achieved_flops(device, quant, cal, backend)
        compute = batch * 2 * model.active_params / tp / flops if flops > 0 else 0.0
        alu = decode_alu_s(model, quant, device, ids, True, cal) / tp
        batch_steps.append(max(bytes_b / bw, alu, compute)
                           + device_fixed_overhead_s(device, model.n_layers, workload, cal, backend))  # fmt: skip
    comm_b = 2 * model.n_layers * allreduce_s(model, links, tp, batch, range(tp))
    aggregate = batch / (max(batch_steps) + comm_b + cal.fixed_overhead_s)
    prefill_s = max(
        _prefill_s(model, quant, [d], [ids], workload, cal, backend, tp=tp) for d in devices
    ) + 2 * model.n_layers * allreduce_s(model, links, tp, workload.prompt_tokens, range(tp))
    notes = []
    if len({d.spec.id for d in devices}) > 1:
        notes.append("tensor parallel over mismatched cards: every layer waits for the slowest card")
    return _assemble("tensor_parallel", per_device, token_s, aggregate, prefill_s, workload, bound_s, comm_1, notes)


def _replicas(
    model: ModelSpec,
    quant: QuantSpec,
    placement: Placement,
    workload: Workload,
    links: Links,
    cal: Calibration,
    backend: str | None,
) -> Estimate:
    """One full copy per device, each serving `workload` (the planner gives each replica its own share of the
    concurrency and its own KV: `combine_replicas`)."""
    singles = [
        _layer_pipeline(model, quant, Placement(mode="single", devices=(d,)), workload, links, cal, backend)
        for d in placement.devices
    ]
    return combine_replicas(singles)


def combine_replicas(singles: list[Estimate]) -> Estimate:
    """Replicas, each a one-device estimate with its own share of the streams: a stream runs on one replica, so
    one stream is as fast as the slowest replica and the aggregate is the sum of the replicas' aggregates."""
    return Estimate(
        fits=all(s.fits for s in singles),
        mode="replica",
        devices=tuple(s.devices[0] for s in singles),
        decode_tokens_per_s=min(s.decode_tokens_per_s for s in singles),
        aggregate_tokens_per_s=sum(s.aggregate_tokens_per_s for s in singles),
        prefill_tokens_per_s=min(s.prefill_tokens_per_s for s in singles),
        ttft_s=max(s.ttft_s for s in singles),
        bandwidth_bound_tokens_per_s=max(s.bandwidth_bound_tokens_per_s for s in singles),
        notes=(f"{len(singles)} replicas; each stream runs on one",),
    ).model_copy(update=_combined_ranges(singles))


def _combined_ranges(singles: list[Estimate]) -> dict[str, float | None]:
    """The replicas' 80 % ranges combined as their speeds are (slowest stream, summed aggregate), end by end; none
    when a replica has none."""
    rules: dict[str, Callable[[list[float]], float]] = {
        "decode_tokens_per_s": min, "aggregate_tokens_per_s": sum, "prefill_tokens_per_s": min, "ttft_s": max,
    }  # fmt: skip
    out: dict[str, float | None] = {}
    for name, combine in rules.items():
        for end in ("low", "high"):
            values = [getattr(s, f"{name}_{end}") for s in singles]
            known = [v for v in values if v is not None]
            out[f"{name}_{end}"] = combine(known) if len(known) == len(values) else None
    return out


def _service_estimate(model: ModelSpec, placement: Placement) -> Estimate:
    """Non-LLM services: resident memory from the catalog, no token speeds."""
    device = placement.devices[0]
    memory = service_memory(model, device.kind == "gpu")
    per = _device_estimate(device, 0, memory, 0.0, 0.0)
    return Estimate(
        fits=per.fits,
        mode="single",
        devices=(per,),
        decode_tokens_per_s=0.0,
        aggregate_tokens_per_s=0.0,
        prefill_tokens_per_s=0.0,
        ttft_s=0.0,
        bandwidth_bound_tokens_per_s=0.0,
        notes=(f"{model.name}: speed in {model.speed_unit or 'its own unit'}",),
    )
