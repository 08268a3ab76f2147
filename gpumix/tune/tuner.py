"""`gpumix tune`: measure each device, fit the speed model, and measure only the splits it points to.

1. Each device alone (every layer and the output on it) where it fits: one llama-bench run each.
2. Fit seconds-per-byte per device and the per-device overhead (gpumix.tune.fit) on the GGUF's exact bytes.
3. Predict every split llama.cpp can load (every device order, so the output layer can sit on any device); measure
   the predicted best if it is new, else the best unmeasured candidate next to it (which pins the overhead), refit,
   and repeat until the predicted best has been measured and confirmed, or the budget is spent.
The best *measured* point wins: the model only decides what to measure.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gpumix.errors import GpumixError
from gpumix.kinds import Objective
from gpumix.tune.bench import BenchError, BenchResult
from gpumix.tune.fit import Observation, SpeedModel, device_loads, fit_speed_model
from gpumix.tune.layout import ModelLayout
from gpumix.tune.splits import Assignment, Split, assign_layers, candidate_splits, describe

# Memory a device needs beyond weights and KV: llama.cpp's compute buffer (logits of a 512-token ubatch over a
# large vocabulary reach ~0.5 GiB, engines.md §1.3 prints them) and allocator slack.
COMPUTE_RESERVE_BYTES = 512 * 2**20
DEFAULT_BUDGET = 4
# Two measured points closer than this are a tie (llama-bench's run-to-run spread on a shared machine is ~1-3%).
TIE_TOLERANCE = 0.02
# A measured point this far below the fitted model's prediction is re-measured once if budget is left.
RECHECK_RESIDUAL = 0.15


@dataclass(frozen=True)
class TuneDevice:
    name: str  # what -dev takes: RPC0, CUDA0, ...
    label: str  # stable identity for the calibration file: "RPC0[127.0.0.1:50052]", "CUDA0[NVIDIA ...]"
    free_bytes: int


@dataclass(frozen=True)
class TunePoint:
    split: Split
    assignment: Assignment
    tokens_per_s: float  # measured, or predicted when measured is False
    measured: bool
    predicted_tokens_per_s: float | None = None  # what the model said before measuring it
    stddev_tokens_per_s: float = 0.0
    phase: str = "search"  # alone | search | curve
    bench: BenchResult | None = None


@dataclass(frozen=True)
class TuneResult:
    layout: ModelLayout
    devices: tuple[TuneDevice, ...]
    objective: Objective
    parallel: int
    points: tuple[TunePoint, ...]  # measured, in the order they ran
    curve: tuple[TunePoint, ...]  # the final model's prediction for every candidate that fits
    best: TunePoint
    model: SpeedModel
    runs: int
    baselines: dict[str, TunePoint] = field(default_factory=dict)  # even, memory_proportional (predicted)
    stopped: str | None = None  # why the search stopped early (a device error)

    @property
    def predicted_best(self) -> TunePoint:
        """The fitted model's optimum over every split that fits (what re-planning with the calibration picks)."""
        return max(self.curve, key=lambda p: p.tokens_per_s)

    def tensor_split_in_device_order(self, split: Split) -> list[float]:
        values = [0.0] * len(self.devices)
        for pos, dev in enumerate(split.order):
            values[dev] = split.tensor_split[pos]
        return values

    def point_json(self, p: TunePoint) -> dict:
        return {
            "tensor_split": self.tensor_split_in_device_order(p.split),
            "dev": "/".join(self.devices[i].name for i in p.split.order),
            "ts": "/".join(f"{v:g}" for v in p.split.tensor_split),
            "layers": list(p.assignment.layers),
            "output_device": None if p.assignment.output_device is None else self.devices[p.assignment.output_device].name,
            "tokens_per_s": round(p.tokens_per_s, 3),
            "measured": p.measured,
            "predicted_tokens_per_s": None if p.predicted_tokens_per_s is None else round(p.predicted_tokens_per_s, 3),
            "stddev_tokens_per_s": round(p.stddev_tokens_per_s, 3),
            "phase": p.phase,
        }

    def to_json(self) -> dict:
        best = self.point_json(self.best)
        return {
            "model": self.layout.path,
            "objective": self.objective,
            "parallel": self.parallel,
            "devices": [{"name": d.name, "label": d.label, "free_bytes": d.free_bytes} for d in self.devices],
            "best": best,
            "runs": self.runs,
            "points": [self.point_json(p) for p in self.points]
            + [self.point_json(p) for p in self.curve if not _is_measured(p, self.points)],
            "predicted_best": self.point_json(self.predicted_best) if self.curve else None,
            "baselines": {k: self.point_json(v) for k, v in self.baselines.items()},
            "gain_vs": {k: round(self.best.tokens_per_s / v.tokens_per_s, 3) for k, v in self.baselines.items()},
            "fit": {
                "devices": [
                    {"name": d.name, "achieved_bandwidth_gb_per_s": round(self.model.bandwidth_gb_per_s(i), 3)}
                    for i, d in enumerate(self.devices)
                ],
                "per_device_overhead_s": self.model.overhead_s,
                "overhead_identified": self.model.overhead_identified,
            },
            "stopped": self.stopped,
        }


def _is_measured(p: TunePoint, measured: Sequence[TunePoint]) -> bool:
    return any(m.assignment.key() == p.assignment.key() for m in measured)


Measure = Callable[[Split], BenchResult]
OnPoint = Callable[[TunePoint, int], None]


def device_bytes_needed(assignment: Assignment, layout: ModelLayout, device: int, context: int, parallel: int) -> int:
    layers = [il for il, d in enumerate(assignment.layer_device) if d == device]
    holds_output = assignment.output_device == device
    if not layers and not holds_output:
        return 0
    weights = sum(layout.layer_bytes[il] for il in layers) + (layout.output_bytes if holds_output else 0)
    kv = len(layers) * layout.kv_bytes_per_token_per_layer * context * parallel
    return weights + kv + COMPUTE_RESERVE_BYTES


def fits(assignment: Assignment, layout: ModelLayout, devices: Sequence[TuneDevice], context: int, parallel: int) -> bool:
    return all(
        device_bytes_needed(assignment, layout, i, context, parallel) <= d.free_bytes for i, d in enumerate(devices)
    )


def alone_split(device: int) -> Split:
    return Split((device,), (1.0,))


def tune(
    layout: ModelLayout,
    devices: Sequence[TuneDevice],
    measure: Measure,
    *,
    budget: int = DEFAULT_BUDGET,
    objective: Objective = "latency",
    parallel: int = 1,
    context: int = 4096,
    reorder: bool = True,
    host_offload: bool = False,
    on_point: OnPoint | None = None,
    prior_overhead_s: float | None = None,
) -> TuneResult:
    n_dev = len(devices)
    if n_dev == 0:
        raise GpumixError("gpumix tune needs at least one device", hint="pass --devices or --rpc")
    if budget < 1:
        raise GpumixError(f"--budget {budget}: at least 1 llama-bench run is needed")
    n_layers = layout.n_layers
    splits = candidate_splits(n_dev, n_layers, reorder)
    if host_offload:  # GPU + CPU partial offload: -ngl k keeps the first layers (and, below n+1, the output) on the host
        splits += [Split((i,), (1.0,), k) for i in range(n_dev) for k in range(n_layers + 1)]
    candidates = [(s, assign_layers(s, n_dev, n_layers)) for s in splits]
    feasible = [(s, a) for s, a in candidates if fits(a, layout, devices, context, parallel)]
    if not feasible:
        total_free = sum(d.free_bytes for d in devices)
        raise GpumixError(
            f"{layout.name} ({layout.weight_bytes / 2**30:.2f} GiB of weights + KV for {context} tokens) does not fit "
            f"on {' + '.join(d.name for d in devices)} ({total_free / 2**30:.2f} GiB free together)",
            hint="add a device, lower --ctx, or use a smaller quant",
        )
    points: list[TunePoint] = []
    stopped: str | None = None
    model: SpeedModel | None = None
    step_scale = parallel if objective == "throughput" else 1  # fit per-step time; report aggregate t/s

    def predict(a: Assignment) -> float | None:
        return None if model is None else model.tokens_per_s(a, layout) * step_scale

    def run(split: Split, phase: str) -> bool:
        nonlocal stopped
        a = assign_layers(split, n_dev, n_layers)
        predicted = predict(a)
        try:
            result = measure(split)
        except BenchError as exc:
            names = "/".join(devices[i].name for i in split.order)
            stopped = f"{describe(split, [d.name for d in devices])} on {names} failed: {exc.message}"
            return False
        point = TunePoint(split, a, result.tokens_per_s, True, predicted, result.stddev_tokens_per_s, phase, result)
        points.append(point)
        if on_point:
            on_point(point, len(points))
        return True

    def refit() -> SpeedModel:
        obs = [Observation(p.assignment, p.tokens_per_s / step_scale) for p in _merge_repeats(points)]
        kwargs = {} if prior_overhead_s is None else {"prior_overhead_s": prior_overhead_s}
        return fit_speed_model(obs, layout, n_dev, **kwargs)

    # 1. each device alone (the host CPU too, when offloading to it); where the model does not fit on a device,
    # the split that loads it most
    if host_offload:
        run(Split((0,), (1.0,), 0), "alone")
    for i in range(n_dev):
        if len(points) >= budget or stopped:
            break
        split = alone_split(i)
        if fits(assign_layers(split, n_dev, n_layers), layout, devices, context, parallel):
            run(split, "alone")
            continue
        most = _most_loaded(feasible, i, layout)
        if most is not None and most[1].key() not in {p.assignment.key() for p in points}:
            run(most[0], "max-load")
    # 2. model-guided search
    while points and not stopped and len(points) < budget:
        model = fitted = refit()  # `fitted` is never None, for the sort key below
        ranked = sorted(feasible, key=lambda sa: -fitted.tokens_per_s(sa[1], layout))
        measured_keys = {p.assignment.key() for p in points}
        best_split, best_a = ranked[0]
        confirmed = model.identified_all and any(p.phase == "search" for p in points) and best_a.key() in measured_keys
        if confirmed:
            break
        if best_a.key() not in measured_keys:
            run(best_split, "search")
            continue
        # The predicted best is measured: measure the runner-up to test the curve (and pin the overhead).
        nxt = next(((s, a) for s, a in ranked if a.key() not in measured_keys), None)
        if nxt is None:
            break
        run(nxt[0], "search")
    # 3. noise guard: with budget left, re-measure once the point measured furthest *below* the fitted model (a run
    # caught in a busy moment on a shared machine looks like a slow device and would steer the choice)
    while points and not stopped and len(points) < budget:
        model = refit()
        counts: dict[tuple, int] = {}
        for p in points:
            counts[p.assignment.key()] = counts.get(p.assignment.key(), 0) + 1
        suspects = [
            (p.tokens_per_s / (model.tokens_per_s(p.assignment, layout) * step_scale) - 1, p)
            for p in points
            if counts[p.assignment.key()] == 1
        ]
        if not suspects:
            break
        residual, worst = min(suspects, key=lambda rp: rp[0])
        if residual > -RECHECK_RESIDUAL:
            break
        run(worst.split, "recheck")
    if not points:
        raise GpumixError(
            "no llama-bench run succeeded" + (f": {stopped}" if stopped else ""),
            hint="check the devices with `llama-bench --list-devices` (and `gpumix testbed status`)",
        )
    model = refit()
    best = _best(points, model, layout)
    curve = tuple(
        TunePoint(s, a, model.tokens_per_s(a, layout) * step_scale, False, phase="curve") for s, a in feasible
    )
    baselines = _baselines(layout, devices, model, step_scale, points)
    return TuneResult(
        layout, tuple(devices), objective, parallel, tuple(points), curve, best, model, len(points), baselines, stopped
    )


def _most_loaded(
    feasible: Sequence[tuple[Split, Assignment]], device: int, layout: ModelLayout
) -> tuple[Split, Assignment] | None:
    """The feasible split that puts the most bytes on `device` (fewest devices on a tie): the partial offload that
    measures that device best when the whole model does not fit on it."""
    using = [(s, a) for s, a in feasible if device in a.used_devices]
    if not using:
        return None
    return max(using, key=lambda sa: (device_loads(sa[1], layout).get(device, 0), -len(sa[1].used_devices)))


def _best(points: Sequence[TunePoint], model: SpeedModel, layout: ModelLayout) -> TunePoint:
    """The fastest measured point; points measured within noise of it (TIE_TOLERANCE, or two standard
    deviations) count as ties, and a tie goes to the split the fitted model ranks best, so re-planning with the
    calibration file reproduces the choice instead of chasing noise."""
    merged = _merge_repeats(points)
    top = max(merged, key=lambda p: p.tokens_per_s)
    tied = [
        p for p in merged
        if p.tokens_per_s >= top.tokens_per_s * (1 - TIE_TOLERANCE) - 2 * max(p.stddev_tokens_per_s, top.stddev_tokens_per_s)
    ]  # fmt: skip
    return max(tied, key=lambda p: (model.tokens_per_s(p.assignment, layout), p.tokens_per_s))


def _merge_repeats(points: Sequence[TunePoint]) -> list[TunePoint]:
    """One point per placement; a placement measured more than once keeps its fastest run: on a shared machine
    other work only ever steals time, so the least disturbed run is the closest to the device's own speed."""
    groups: dict[tuple, list[TunePoint]] = {}
    for p in points:
        groups.setdefault(p.assignment.key(), []).append(p)
    return [max(runs, key=lambda p: p.tokens_per_s) for runs in groups.values()]


def _baselines(
    layout: ModelLayout, devices: Sequence[TuneDevice], model: SpeedModel, step_scale: int, points: Sequence[TunePoint]
) -> dict[str, TunePoint]:
    """llama.cpp's default split (-ts proportional to free memory) and an even split: measured if tune ran them,
    else predicted by the fitted model."""
    n_dev = len(devices)
    if n_dev < 2:
        return {}
    order = tuple(range(n_dev))
    splits = {
        "even": Split(order, (1.0,) * n_dev),
        "memory_proportional": Split(order, tuple(float(round(d.free_bytes / 2**20)) for d in devices)),
    }
    found: dict[str, TunePoint] = {}
    for name, split in splits.items():
        a = assign_layers(split, n_dev, layout.n_layers)
        measured = next((p for p in points if p.assignment.key() == a.key()), None)
        found[name] = measured or TunePoint(split, a, model.tokens_per_s(a, layout) * step_scale, False, phase="curve")
    return found

