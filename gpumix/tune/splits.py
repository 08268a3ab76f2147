"""Where llama.cpp puts each layer for a given `-dev`, `-ngl` and `-ts`, exactly, and the `-ts` for a wanted split.

llama-model.cpp (llama_model::load_tensors): the split points are the cumulative `-ts` shares normalised to 1
(float32); with i_gpu_start = max(n_layer - ngl, 0) and act = min(ngl, n_layer + 1), layer il (il = n_layer is
the output layer) goes to the CPU when il < i_gpu_start or il - i_gpu_start >= act, else to the device
`upper_bound(splits, float(il - i_gpu_start) / act)`. The output layer is the one that matters most for small
models: Gemma 3 270M's tied 262144 × 640 Q8_0 output matrix is 72% of the file, so which device holds it sets the
speed more than the repeating layers do.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gpumix.errors import GpumixError

HOST = "CPU"  # what llama.cpp calls the host CPU when layers are not offloaded


@dataclass(frozen=True)
class Split:
    """One way to run the model: the `-dev` order, the `-ts` values (in that order) and `-ngl`."""

    order: tuple[int, ...]  # indices into the tuner's device list, in `-dev` order
    tensor_split: tuple[float, ...]  # `-ts`, one value per device in `order`
    n_gpu_layers: int = 99

    def key(self) -> tuple:
        return (self.order, self.tensor_split, self.n_gpu_layers)


@dataclass(frozen=True)
class Assignment:
    """What a Split loads where: the device of every repeating layer (tuner's device indices, -1 = host CPU) and
    the output layer's device (None = host CPU)."""

    layer_device: tuple[int, ...]
    output_device: int | None
    n_devices: int

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(self.layer_device.count(i) for i in range(self.n_devices))

    @property
    def host_layers(self) -> int:
        return self.layer_device.count(-1)

    @property
    def used_devices(self) -> tuple[int, ...]:
        return tuple(i for i, n in enumerate(self.layers) if n > 0 or i == self.output_device)

    def key(self) -> tuple:
        return (self.layer_device, self.output_device)


def assign_layers(split: Split, n_devices: int, n_layers: int) -> Assignment:
    """Replicates llama.cpp's layer → device assignment for this split."""
    if len(split.order) != len(split.tensor_split):
        raise GpumixError(f"-ts has {len(split.tensor_split)} values for {len(split.order)} devices")
    shares = np.asarray(split.tensor_split, dtype=np.float32)
    if (shares < 0).any():
        raise GpumixError("-ts values must not be negative")
    if not shares.any():
        raise GpumixError("-ts values must not all be zero (gpumix passes explicit splits)")
    cumulative = np.cumsum(shares, dtype=np.float32)
    splits = [float(np.float32(c) / np.float32(cumulative[-1])) for c in cumulative]
    ngl = max(split.n_gpu_layers, 0) if split.n_gpu_layers >= 0 else n_layers + 1
    i_gpu_start = max(n_layers - ngl, 0)
    act = min(ngl, n_layers + 1)
    where: list[int] = []
    for il in range(n_layers + 1):
        if il < i_gpu_start or il - i_gpu_start >= act:
            where.append(-1)
            continue
        frac = float(np.float32(il - i_gpu_start) / np.float32(act))
        pos = min(bisect.bisect_right(splits, frac), len(splits) - 1)
        where.append(split.order[pos])
    output = where.pop()
    return Assignment(tuple(where), None if output < 0 else output, n_devices)


def split_for(order: Sequence[int], layers_in_order: Sequence[int], n_gpu_layers: int = 99) -> Split:
    """The `-ts` (whole numbers) that loads `layers_in_order` on `order`, the output with the last used device.

    Integer shares make cumsum/total equal il/act at the boundaries in the same float32 arithmetic llama.cpp
    uses, so the boundary layer lands on the next device exactly as intended."""
    values = [float(n) for n in layers_in_order]
    last = max((i for i, n in enumerate(layers_in_order) if n > 0), default=len(values) - 1)
    values[last] += 1.0  # the output layer counts as one more layer on the device after the last repeating one
    return Split(tuple(order), tuple(values), n_gpu_layers)


def describe(split: Split, names: Sequence[str]) -> str:
    devs = "/".join(names[i] for i in split.order)
    ts = "/".join(f"{v:g}" for v in split.tensor_split)
    return f"-dev {devs} -ts {ts}" + ("" if split.n_gpu_layers >= 99 else f" -ngl {split.n_gpu_layers}")


def fraction_on(assignment: Assignment, device: int, n_layers: int) -> float:
    """Share of the repeating layers + output on `device` (the x axis of the split curve)."""
    on = assignment.layers[device] + (1 if assignment.output_device == device else 0)
    return on / (n_layers + 1)


def candidate_splits(n_devices: int, n_layers: int, reorder: bool = True) -> list[Split]:
    """Every contiguous layer split llama.cpp can load on these devices (all offloaded), in every device order
    when `reorder` (the order decides which device holds the output layer). Two devices: 2 × (n_layers + 2)."""
    from itertools import permutations

    orders = list(permutations(range(n_devices))) if reorder and n_devices <= 4 else [tuple(range(n_devices))]
    found: dict[tuple, Split] = {}
    for order in orders:
        for counts in _compositions(n_layers, n_devices):
            split = split_for(order, counts)
            a = assign_layers(split, n_devices, n_layers)
            found.setdefault(a.key(), split)
    return list(found.values())


def _compositions(total: int, parts: int) -> list[tuple[int, ...]]:
    if parts == 1:
        return [(total,)]
    return [(k, *rest) for k in range(total + 1) for rest in _compositions(total - k, parts - 1)]
