"""llama.cpp's layer → device assignment for -ts/-dev/-ngl, replicated exactly."""

from __future__ import annotations

import pytest

from gpumix.errors import GpumixError
from gpumix.tune.splits import Split, assign_layers, candidate_splits, split_for


@pytest.mark.parametrize(
    ("ts", "layers", "output"),
    [
        ((1.0, 0.0), (18, 0), 0),  # everything on the first device
        ((0.0, 1.0), (0, 18), 1),
        ((1.0, 1.0), (10, 8), 1),  # 19 offloaded "layers" (18 + output): il/19 < 0.5 → il <= 9 on device 0
        ((9.0, 1.0), (18, 0), 1),  # 18/19 = 0.947 > 0.9: the output lands on the second device alone
        ((3.0, 1.0), (15, 3), 1),
    ],
)
def test_assignment_matches_llama_cpp_rule(ts, layers, output) -> None:
    a = assign_layers(Split((0, 1), ts), 2, 18)
    assert a.layers == layers
    assert a.output_device == output


def test_device_order_decides_where_the_output_goes() -> None:
    a = assign_layers(Split((1, 0), (1.0, 18.0)), 2, 18)
    assert a.layers == (17, 1)  # tuner's device order: device 0 holds 17, device 1 holds layer 0
    assert a.output_device == 0
    assert a.layer_device[0] == 1


def test_partial_offload_leaves_first_layers_and_output_on_host() -> None:
    a = assign_layers(Split((0,), (1.0,), n_gpu_layers=10), 1, 18)
    assert a.host_layers == 8 and a.layers == (10,)
    assert a.output_device is None  # -ngl below n_layer + 1 keeps the output on the CPU


@pytest.mark.parametrize("n_layers", [4, 18, 32])
def test_split_for_loads_exactly_the_requested_counts(n_layers: int) -> None:
    for k in range(n_layers + 1):
        for order in ((0, 1), (1, 0)):
            split = split_for(order, (k, n_layers - k))
            a = assign_layers(split, 2, n_layers)
            in_order = tuple(a.layers[i] for i in order)
            assert in_order == (k, n_layers - k), (order, k, split)
            last_used = order[1] if n_layers - k > 0 else order[0]
            assert a.output_device == last_used


def test_candidates_are_distinct_and_cover_both_orders() -> None:
    cands = candidate_splits(2, 18)
    keys = {assign_layers(s, 2, 18).key() for s in cands}
    assert len(keys) == len(cands) == 2 * 19 - 2  # 19 splits per order; "all on one device" appears in both
    three = candidate_splits(3, 6, reorder=False)
    assert len(three) == len({assign_layers(s, 3, 6).key() for s in three})


def test_bad_tensor_split_is_a_clear_error() -> None:
    with pytest.raises(GpumixError, match="all be zero"):
        assign_layers(Split((0, 1), (0.0, 0.0)), 2, 18)
    with pytest.raises(GpumixError, match="3 values for 2 devices"):
        assign_layers(Split((0, 1), (1.0, 1.0, 1.0)), 2, 18)
