"""How many layers each device gets when one model is split across devices (llama.cpp `-sm layer`).

A token passes through the devices in turn, so one stream's decode time is the *sum* over devices of
(layers_i × seconds per layer on device i) + each active device's fixed overhead + one activation transfer per
device boundary. Many streams pipeline, so aggregate throughput is set by the slowest *stage*.

`best_layer_split` solves both exactly over integer layer counts with a dynamic programme over contiguous layer
ranges (device i holds layers [start_i, start_i + n_i)), subject to each device's memory (weights + KV + compute
buffer + overhead for its layers ≤ free − margin):
- `latency`: minimise Σ stage times (fills the fastest devices first, up to their memory);
- `throughput`: minimise the slowest stage time (balances stage times), ties broken by the sum.

`memory_proportional_split` reproduces llama.cpp's default `-ts` (proportional to free memory) and `even_split`
equal shares; `tensor_split_values` turns layer counts into the `-ts` values that make llama.cpp load exactly
those counts.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

from gpumix.errors import GpumixError
from gpumix.estimate import speed
from gpumix.estimate.calibration import Calibration, default_calibration
from gpumix.estimate.memory import (
    kv_cache_bytes,
    layer_params,
    layer_weight_bytes,
    memory_for_layers,
    non_layer_params,
    output_weight_bytes,
    usable_bytes,
)
from gpumix.estimate.types import Links, Workload
from gpumix.hardware.spec import Device
from gpumix.kinds import Objective
from gpumix.models.spec import ModelSpec, QuantSpec
from gpumix.units import GB

SplitObjective = Objective



@dataclass(frozen=True)
class DeviceCosts:
    """What one device costs, in time and memory, for any contiguous layer range of one model and workload.

    Time follows the estimator's stage model (gpumix.estimate.estimator): max(bytes read ÷ achieved bandwidth,
    FLOPs ÷ achieved FLOP/s) + fixed per-layer overhead + one activation hop into the device."""

    device: Device
    prefix_read_bytes: tuple[float, ...]  # prefix sums of bytes read per token per layer (active weights + KV)
    output_read_bytes: float  # the output projection, read once per token by the device holding it
    bandwidth_bytes_per_s: float
    layer_flops: float  # per token per layer
    output_flops: float
    flops_per_s: float
    fixed_s: tuple[float, ...]  # [n] = fixed per-token overhead with n layers on the device
    link_in_s: float  # one activation arriving from the previous device, per token
    prefix_bytes: tuple[int, ...]  # prefix sums of per-layer memory (weights + KV)
    base_bytes: int  # compute buffer + overhead (+ input embedding) without the output layer
    output_bytes: int  # extra memory when it holds the output layer (weights + logits buffer)
    limit_bytes: int  # free − margin

    def range_bytes(self, start: int, n: int, holds_output: bool) -> int:
        if n == 0 and not holds_output:
            return 0
        layers = self.prefix_bytes[start + n] - self.prefix_bytes[start]
        return layers + self.base_bytes + (self.output_bytes if holds_output else 0)

    def stage_s(self, start: int, n: int, holds_output: bool, first: bool) -> float:
        if n == 0 and not holds_output:
            return 0.0
        read = self.prefix_read_bytes[start + n] - self.prefix_read_bytes[start]
        flops = n * self.layer_flops
        if holds_output:
            read += self.output_read_bytes
            flops += self.output_flops
        compute_s = flops / self.flops_per_s if self.flops_per_s > 0 else 0.0
        hop = 0.0 if first else self.link_in_s
        return max(read / self.bandwidth_bytes_per_s, compute_s) + self.fixed_s[n] + hop


def device_costs(
    model: ModelSpec,
    quant: QuantSpec,
    device: Device,
    workload: Workload,
    links: Links,
    calibration: Calibration,
    *,
    position: int,
    margin: int | None = None,
    world_size: int = 1,
) -> DeviceCosts:
    """What `device` costs per layer at `position` of a layer split over `world_size` devices (vLLM sizes its
    activations by its ranks on a CPU)."""
    n = model.n_layers
    depth = workload.context / 2  # the estimator's average depth over a full context
    weights = layer_weight_bytes(model, quant)
    prefix, read = [0], [0.0]
    for layer in range(n):
        prefix.append(prefix[-1] + weights[layer] + kv_cache_bytes(model, workload, [layer]))
        read.append(read[-1] + speed.decode_bytes_on_device(model, quant, [layer], False, workload, depth))
    with_layer, with_output = (
        memory_for_layers(model, quant, workload, [0], holds_output=out, holds_input=position == 0, device=device,
                          world_size=world_size)
        for out in (False, True)
    )  # fmt: skip
    active_share = model.active_params / model.params_total if model.params_total else 1.0
    return DeviceCosts(
        device=device,
        prefix_read_bytes=tuple(read),
        output_read_bytes=float(output_weight_bytes(model, quant)),
        bandwidth_bytes_per_s=speed.achieved_bandwidth_gb_per_s(device, quant, calibration) * GB,
        layer_flops=2 * layer_params(model) * active_share,
        output_flops=2 * non_layer_params(model) / (1 if model.tied_embeddings else 2),
        flops_per_s=speed.achieved_flops(device, quant, calibration),
        fixed_s=tuple(speed.device_fixed_overhead_s(device, k, workload, calibration) for k in range(n + 1)),
        link_in_s=speed.layer_split_hop_s(model, links, calibration, position),
        prefix_bytes=tuple(prefix),
        base_bytes=with_layer.total_bytes - prefix[1],
        output_bytes=with_output.total_bytes - with_layer.total_bytes,
        limit_bytes=usable_bytes(device, margin),
    )


def _solve(
    costs: Sequence[DeviceCosts], n_layers: int, output_at: int, objective: SplitObjective, min_layers: int = 0
) -> tuple[tuple[float, float], tuple[int, ...]] | None:
    """Best contiguous split with device `output_at` holding the output layer (it must hold ≥ 1 layer and every
    device after it gets none). Returns ((primary, secondary) cost, layers) or None when nothing fits.

    Convention shared with the estimator: the output layer sits on the last device with layers, also when a CPU
    holds the first layers. (llama.cpp keeps it on the CPU when `-ngl` ≤ n_layer, so for CPU offload the GPU
    memory planned here is conservative by the output weights.)
    """
    n_dev = len(costs)
    inf = (math.inf, math.inf)
    # best[k] = cost of placing the first k layers on devices 0..i-1; choice[i][k] = layers on device i.
    best: list[tuple[float, float]] = [(0.0, 0.0)] + [inf] * n_layers
    choices: list[list[int]] = []
    for i, dev in enumerate(costs):
        new = [inf] * (n_layers + 1)
        pick = [-1] * (n_layers + 1)
        out = i == output_at
        allowed = i <= output_at  # the output layer sits with the last layers
        min_n = max(1 if out else 0, min_layers if allowed else 0)
        for start in range(n_layers + 1):
            if best[start] == inf:
                continue
            max_n = n_layers - start if allowed else 0
            for n in range(min(min_n, max_n + 1), max_n + 1):
                if dev.range_bytes(start, n, out) > dev.limit_bytes:
                    break  # more layers only need more memory
                stage = dev.stage_s(start, n, out, first=start == 0)
                prev = best[start]
                if objective == "latency":
                    cand = (prev[0] + stage, prev[1] + stage)
                else:
                    cand = (max(prev[0], stage), prev[1] + stage)
                if cand < new[start + n]:
                    new[start + n] = cand
                    pick[start + n] = n
        best = new
        choices.append(pick)
    if best[n_layers] == inf:
        return None
    layers = [0] * n_dev
    k = n_layers
    for i in range(n_dev - 1, -1, -1):
        layers[i] = choices[i][k]
        k -= layers[i]
    return best[n_layers], tuple(layers)


def all_device_costs(
    model: ModelSpec,
    quant: QuantSpec,
    devices: Sequence[Device],
    workload: Workload,
    links: Links,
    calibration: Calibration,
    margin: int | None = None,
) -> list[DeviceCosts]:
    return [
        device_costs(model, quant, d, workload, links, calibration, position=i, margin=margin, world_size=len(devices))
        for i, d in enumerate(devices)
    ]


def best_layer_split(
    model: ModelSpec,
    quant: QuantSpec,
    devices: Sequence[Device],
    workload: Workload,
    objective: SplitObjective = "latency",
    links: Links | None = None,
    calibration: Calibration | None = None,
    margin: int | None = None,
) -> tuple[int, ...]:
    """Layers per device (in `devices` order) that minimise one stream's decode time (`latency`) or the slowest
    pipeline stage (`throughput`) while every device's memory fits. A CPU device, if any, must come first (llama.cpp
    keeps the first layers on the CPU when offloading). Raises GpumixError when no split fits."""
    found = solve_layer_split(model, quant, devices, workload, objective, links, calibration, margin)
    if found is None:
        raise GpumixError(
            f"{model.name} does not fit on {' + '.join(d.name for d in devices)} with any layer split",
            hint="add memory (another card or CPU offload), shorten the context, or pick a smaller quant",
        )
    return found


def solve_layer_split(
    model: ModelSpec,
    quant: QuantSpec,
    devices: Sequence[Device],
    workload: Workload,
    objective: SplitObjective = "latency",
    links: Links | None = None,
    calibration: Calibration | None = None,
    margin: int | None = None,
    min_layers_per_device: int = 0,
) -> tuple[int, ...] | None:
    """best_layer_split's search; None when nothing fits. `min_layers_per_device` = 1 makes every device a stage
    (a split the user asked for, or vLLM pipeline stages)."""
    if not devices:
        raise GpumixError("a layer split needs at least one device")
    if model.n_layers <= 0:
        raise GpumixError(f"{model.name} has no layer count; a layer split needs one")
    calibration = calibration or default_calibration()  # the packaged fit; callers pass the machine's
    costs = all_device_costs(model, quant, devices, workload, links or Links(), calibration, margin)
    return solve_from_costs(costs, model.n_layers, objective, min_layers_per_device)


def solve_from_costs(
    costs: Sequence[DeviceCosts], n_layers: int, objective: SplitObjective, min_layers: int = 0
) -> tuple[int, ...] | None:
    candidates = []
    for output_at in range(len(costs)):
        if costs[output_at].device.kind == "cpu" and any(c.device.kind == "gpu" for c in costs):
            continue  # with GPUs present the output layer goes to a GPU
        if min_layers and output_at != len(costs) - 1:
            continue  # every device holds layers, so the last one holds the output
        found = _solve(costs, n_layers, output_at, objective, min_layers)
        if found is not None:
            candidates.append(found)
    if not candidates:
        return None
    return min(candidates)[1]


def split_cost_s(costs: Sequence[DeviceCosts], layers: Sequence[int]) -> tuple[float, float] | None:
    """(one-stream decode seconds per token, slowest stage seconds) of a given split, None if it does not fit.

    The same model `best_layer_split` optimises: used to compare it with other splits."""
    output_at = output_device(costs, layers)
    stages: list[float] = []
    start = 0
    for i, (dev, n) in enumerate(zip(costs, layers, strict=True)):
        out = i == output_at
        if dev.range_bytes(start, n, out) > dev.limit_bytes:
            return None
        stages.append(dev.stage_s(start, n, out, first=start == 0))
        start += n
    return sum(stages), max(stages)


def output_device(costs: Sequence[DeviceCosts], layers: Sequence[int]) -> int:
    """The output layer sits on the last device that holds layers (the estimator's convention)."""
    active = [i for i, n in enumerate(layers) if n > 0]
    return active[-1] if active else len(layers) - 1


def layers_from_tensor_split(ts: Sequence[float], n_layers: int, output_on_gpu: bool = True) -> tuple[int, ...]:
    """Layers per device llama.cpp loads for `-ts` (llama-model.cpp: layer il goes to the first device whose
    cumulative share > il / act_gpu_layers, where the output layer counts as one more layer when on the GPU)."""
    total = float(sum(ts))
    if total <= 0:
        raise GpumixError("tensor split values must not all be zero")
    cumulative: list[float] = []
    acc = 0.0
    for value in ts:
        acc += value
        cumulative.append(acc / total)
    act = n_layers + 1 if output_on_gpu else n_layers
    layers = [0] * len(ts)
    for il in range(n_layers):
        dev = min(bisect_right(cumulative, il / act), len(ts) - 1)
        layers[dev] += 1
    return tuple(layers)


def memory_proportional_split(devices: Sequence[Device], n_layers: int) -> tuple[int, ...]:
    """llama.cpp's default split: `-ts` proportional to each device's free memory."""
    return layers_from_tensor_split([d.memory_free_bytes for d in devices], n_layers)


def even_split(n_devices: int, n_layers: int) -> tuple[int, ...]:
    return layers_from_tensor_split([1.0] * n_devices, n_layers)


def tensor_split_values(layers: Sequence[int], output_on_gpu: bool = True) -> list[float]:
    """`-ts` values that make llama.cpp load exactly `layers`: the layer counts themselves, with the output layer
    counted as one more on the last device when it is on the GPU. Whole numbers on purpose: llama.cpp compares
    cumsum/total with il/act_gpu_layers in float, and integer ratios land exactly on the layer boundaries."""
    values = [float(n) for n in layers]
    if output_on_gpu:
        last = max((i for i, n in enumerate(layers) if n > 0), default=len(layers) - 1)
        values[last] += 1
    return values
