"""The layer-split optimiser: exact over integer layer counts, never worse than llama.cpp's default or any 1% split."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from plan_fixtures import FIXED_CALIBRATION

from gpumix.errors import GpumixError
from gpumix.estimate import estimate
from gpumix.estimate.memory import output_weight_bytes
from gpumix.estimate.speed import decode_bytes_on_device
from gpumix.estimate.types import Links, Placement, Workload
from gpumix.hardware.catalog import resolve_gpu
from gpumix.hardware.devices import cpu_device, device_from_spec
from gpumix.models.spec import ModelSpec, QuantSpec
from gpumix.plan.split import (
    all_device_costs,
    best_layer_split,
    even_split,
    layers_from_tensor_split,
    memory_proportional_split,
    split_cost_s,
    tensor_split_values,
)
from gpumix.units import GB, GiB

LLAMA_70B = ModelSpec(
    id="llama-3.3-70b", name="Llama 3.3 70B", params_total=70.55e9, n_layers=80, hidden_size=8192, n_heads=64,
    n_kv_heads=8, head_dim=128, intermediate_size=28672, vocab_size=128256,
)  # fmt: skip
Q4_K_M = QuantSpec(id="q4_k_m", bits_per_weight=4.85)
GPUS = ["RTX 4090", "RTX 3090", "RTX 3060 12GB", "RTX 5060 Ti 16GB", "RTX 5090", "RTX 4070", "Tesla P40", "A100 PCIe 80GB"]


def _devices(*names: str, free_gb: list[float] | None = None):
    out = []
    for i, name in enumerate(names):
        spec = resolve_gpu(name)
        total = spec.vram_bytes if free_gb is None else max(spec.vram_bytes, int(free_gb[i] * GB))
        free = None if free_gb is None else int(free_gb[i] * GB)
        out.append(device_from_spec(spec, i, free_bytes=free, total_bytes=total))
    return out


def test_latency_fills_the_faster_card_first(calibration):
    devices = _devices("RTX 4090", "RTX 3060 12GB")
    model = LLAMA_70B.model_copy(update={"params_total": 45e9, "n_layers": 60})
    layers = best_layer_split(model, Q4_K_M, devices, Workload(context=4096), "latency", calibration=calibration)
    costs = all_device_costs(model, Q4_K_M, devices, Workload(context=4096), Links(), calibration)
    # One more layer on the 4090 no longer fits: it is full.
    more = (layers[0] + 1, layers[1] - 1)
    assert split_cost_s(costs, more) is None
    # ... and the split beats llama.cpp's default (proportional to free memory).
    default = memory_proportional_split(devices, model.n_layers)
    assert default[0] < layers[0]
    assert split_cost_s(costs, layers)[0] < split_cost_s(costs, default)[0]


def test_throughput_balances_stage_times(calibration):
    devices = _devices("RTX 4090", "RTX 3060 12GB", free_gb=[60, 60])  # memory no constraint
    wl = Workload(context=2048, parallel=8)
    layers = best_layer_split(LLAMA_70B, Q4_K_M, devices, wl, "throughput", calibration=calibration)
    # Share ∝ speed: the 4090 has 2.8x the bandwidth of the 3060, so it takes ~74% of the layers.
    assert 0.68 < layers[0] / 80 < 0.78
    latency = best_layer_split(LLAMA_70B, Q4_K_M, devices, wl, "latency", calibration=calibration)
    assert latency == (80, 0)  # one stream: everything on the fast card (no hop) when it fits


def test_no_split_fits_is_a_clear_error(calibration):
    devices = _devices("RTX 3090", "RTX 3060 12GB")
    with pytest.raises(GpumixError, match="does not fit"):
        best_layer_split(LLAMA_70B, Q4_K_M, devices, Workload(context=8192), calibration=calibration)


def test_cpu_offload_keeps_the_first_layers_on_the_cpu(calibration):
    cpu = cpu_device(64 * GB, 60, 8)
    gpus = _devices("RTX 3090", "RTX 3060 12GB")
    layers = best_layer_split(
        LLAMA_70B, Q4_K_M, [cpu, *gpus], Workload(context=8192), "latency", calibration=calibration
    )
    assert sum(layers) == 80 and layers[0] > 0
    # The GPUs are filled (the CPU is ~15x slower per byte): one more layer on either GPU does not fit.
    costs = all_device_costs(LLAMA_70B, Q4_K_M, [cpu, *gpus], Workload(context=8192), Links(), calibration)
    for gpu in (1, 2):
        moved = list(layers)
        moved[0] -= 1
        moved[gpu] += 1
        assert split_cost_s(costs, moved) is None
    assert tensor_split_values(layers[1:], output_on_gpu=False) == [float(layers[1]), float(layers[2])]


@pytest.mark.parametrize("layers", [(43, 37), (40, 40), (1, 79), (80, 0), (10, 30, 40)])
def test_tensor_split_values_reproduce_the_layer_counts(layers):
    ts = tensor_split_values(layers)
    assert layers_from_tensor_split(ts, sum(layers)) == layers


def test_llama_default_splits():
    # Equal shares: llama.cpp counts the output layer, so the first card gets 41 of 81 "layers".
    assert even_split(2, 80) == (41, 39)
    assert memory_proportional_split(_devices("RTX 3090", "RTX 3060 12GB"), 80) == (54, 26)


@st.composite
def _scenario(draw):
    fast_name, slow_name = draw(st.lists(st.sampled_from(GPUS), min_size=2, max_size=2, unique=True))
    fast, slow = resolve_gpu(fast_name), resolve_gpu(slow_name)
    if fast.mem_bandwidth_gb_per_s < slow.mem_bandwidth_gb_per_s:
        fast, slow = slow, fast
    n_layers = draw(st.integers(8, 96))
    hidden = draw(st.sampled_from([2048, 3072, 4096, 5120, 8192]))
    model = ModelSpec(
        id="m", name="random", params_total=draw(st.floats(1e9, 80e9)), n_layers=n_layers, hidden_size=hidden,
        n_heads=hidden // 128, n_kv_heads=draw(st.sampled_from([4, 8])), head_dim=128, intermediate_size=hidden * 3,
        vocab_size=draw(st.sampled_from([32000, 128256])),
    )  # fmt: skip
    quant = QuantSpec(id=draw(st.sampled_from(["q4_k_m", "q8_0", "f16"])), bits_per_weight=draw(st.floats(4, 16)))
    workload = Workload(context=draw(st.sampled_from([2048, 8192])), parallel=draw(st.integers(1, 4)))
    costs = all_device_costs(model, quant, [device_from_spec(fast, 0), device_from_spec(slow, 1)], workload,
                             Links(), FIXED_CALIBRATION)  # fmt: skip
    whole = costs[0].range_bytes(0, n_layers, True)
    margin = 1024 * 2**20  # GPU_MARGIN_BYTES
    # The model fits the faster card plus part of the slower: fast holds 30-95% of it, slow the rest and more.
    fast_free = int(whole * draw(st.floats(0.3, 0.95))) + margin
    slow_free = int(whole * draw(st.floats(0.6, 1.5))) + margin
    devices = [
        device_from_spec(fast, 0, free_bytes=fast_free, total_bytes=max(fast_free, 1)),
        device_from_spec(slow, 1, free_bytes=slow_free, total_bytes=max(slow_free, 1)),
    ]
    return model, quant, workload, devices


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_scenario())
def test_planned_split_beats_default_and_every_grid_split(scenario):
    model, quant, workload, devices = scenario
    costs = all_device_costs(model, quant, devices, workload, Links(), FIXED_CALIBRATION)
    try:
        layers = best_layer_split(model, quant, devices, workload, "latency", calibration=FIXED_CALIBRATION)
    except GpumixError:
        # Only allowed when truly no split fits: check every integer split.
        assert all(split_cost_s(costs, (k, model.n_layers - k)) is None for k in range(model.n_layers + 1))
        return
    best = split_cost_s(costs, layers)
    assert best is not None
    event("split" if all(layers) else "one card")
    candidates = [memory_proportional_split(devices, model.n_layers)]
    candidates += [layers_from_tensor_split([p, 100 - p], model.n_layers) for p in range(101)]
    candidates += [(k, model.n_layers - k) for k in range(model.n_layers + 1)]  # exhaustive, too
    for other in candidates:
        cost = split_cost_s(costs, other)
        if cost is not None:
            assert best[0] <= cost[0] + 1e-12, (layers, other)
    # Physics ceiling: time per token ≥ bytes read ÷ peak bandwidth on each device.
    bound = 0.0
    start = 0
    for i, (dev, n) in enumerate(zip(devices, layers, strict=True)):
        holds_output = i == max(j for j, k in enumerate(layers) if k > 0)
        read = decode_bytes_on_device(model, quant, list(range(start, start + n)), holds_output, workload,
                                      workload.context / 2)  # fmt: skip
        bound += read / (dev.spec.mem_bandwidth_gb_per_s * GB)
        start += n
    assert best[0] >= bound


@settings(max_examples=15, deadline=None)
@given(_scenario())
def test_throughput_split_minimises_the_slowest_stage(scenario):
    model, quant, workload, devices = scenario
    costs = all_device_costs(model, quant, devices, workload, Links(), FIXED_CALIBRATION)
    try:
        layers = best_layer_split(model, quant, devices, workload, "throughput", calibration=FIXED_CALIBRATION)
    except GpumixError:
        return
    best = split_cost_s(costs, layers)[1]
    for k in range(model.n_layers + 1):
        cost = split_cost_s(costs, (k, model.n_layers - k))
        if cost is not None:
            assert best <= cost[1] + 1e-12


def test_three_devices_exact_against_brute_force(calibration):
    devices = _devices("RTX 3090", "RTX 4070", "RTX 3060 12GB")
    model = LLAMA_70B.model_copy(update={"n_layers": 40, "params_total": 40e9})
    wl = Workload(context=4096)
    costs = all_device_costs(model, Q4_K_M, devices, wl, Links(), calibration)
    for objective, slot in (("latency", 0), ("throughput", 1)):
        layers = best_layer_split(model, Q4_K_M, devices, wl, objective, calibration=calibration)
        best = split_cost_s(costs, layers)[slot]
        for a, b in itertools.product(range(41), repeat=2):
            if a + b <= 40:
                cost = split_cost_s(costs, (a, b, 40 - a - b))
                if cost is not None:
                    assert best <= cost[slot] + 1e-12
    assert output_weight_bytes(model, Q4_K_M) > 0 and GiB > 0


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_scenario())
def test_estimator_agrees_the_planned_split_is_fastest(scenario):
    """The estimator's own prediction (estimate()) ranks the planned split first on the 1% grid and the default."""
    model, quant, workload, devices = scenario
    costs = all_device_costs(model, quant, devices, workload, Links(), FIXED_CALIBRATION)
    try:
        layers = best_layer_split(model, quant, devices, workload, "latency", calibration=FIXED_CALIBRATION)
    except GpumixError:
        return

    def predicted(split):
        placement = Placement(mode="layer_split", devices=tuple(devices), layers=tuple(split))
        return estimate(model, quant, placement, workload, Links(), FIXED_CALIBRATION)

    mine = predicted(layers)
    assert mine.decode_tokens_per_s <= mine.bandwidth_bound_tokens_per_s
    others = [memory_proportional_split(devices, model.n_layers)]
    others += [layers_from_tensor_split([p, 100 - p], model.n_layers) for p in range(0, 101, 1)]
    for other in set(others):
        if split_cost_s(costs, other) is None:
            continue  # does not fit with the safety margin
        theirs = predicted(other)
        assert theirs.decode_tokens_per_s <= theirs.bandwidth_bound_tokens_per_s
        assert mine.decode_tokens_per_s >= theirs.decode_tokens_per_s * (1 - 1e-9), (layers, other)
