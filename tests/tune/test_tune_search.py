"""The fit and the model-guided search on synthetic devices (no binaries): a known speed model stands in for
llama-bench, so the best split is known exactly and the search can be checked against brute force."""

from __future__ import annotations

import random

import pytest

from gpumix.errors import GpumixError
from gpumix.tune.bench import BenchError, BenchResult
from gpumix.tune.fit import Observation, device_loads, fit_speed_model
from gpumix.tune.splits import Split, assign_layers, candidate_splits
from gpumix.tune.tuner import COMPUTE_RESERVE_BYTES, TuneDevice, fits, tune

GiB = 2**30


class SyntheticBed:
    """t(split) = Σ_used bytes_i / bw_i + overhead, optional multiplicative noise; counts the runs."""

    def __init__(self, layout, bw_gb_per_s, overhead_s, noise=0.0, fail_on_run=None, seed=0):
        self.layout, self.bw, self.o, self.noise = layout, [b * 1e9 for b in bw_gb_per_s], overhead_s, noise
        self.fail_on_run, self.runs, self.rng = fail_on_run, 0, random.Random(seed)

    def true_tps(self, split: Split) -> float:
        a = assign_layers(split, len(self.bw), self.layout.n_layers)
        return 1.0 / sum(b / self.bw[i] + self.o for i, b in device_loads(a, self.layout).items())

    def __call__(self, split: Split) -> BenchResult:
        self.runs += 1
        if self.fail_on_run == self.runs:
            raise BenchError("RPC connection lost: recv failed", kind="rpc_lost")
        tps = self.true_tps(split) * (1 + self.rng.uniform(-self.noise, self.noise))
        return BenchResult(tps, 0.0, 0, 32, (tps,), "", "", 99, 0)


def devices(*free_gib: float) -> list[TuneDevice]:
    return [TuneDevice(f"RPC{i}", f"RPC{i}[127.0.0.1:{50052 + i}]", int(f * GiB)) for i, f in enumerate(free_gib)]


def brute_force_best(layout, devs, bed: SyntheticBed, context=4096) -> float:
    n = len(devs)
    return max(
        bed.true_tps(s)
        for s in candidate_splits(n, layout.n_layers)
        if fits(assign_layers(s, n, layout.n_layers), layout, devs, context, 1)
    )


def test_fit_recovers_bandwidth_and_overhead_exactly(gemma_like_layout) -> None:
    bed = SyntheticBed(gemma_like_layout, [9.0, 3.6], 0.004)
    splits = [Split((0,), (1.0,)), Split((1,), (1.0,)), Split((0, 1), (1.0, 1.0))]
    obs = [Observation(assign_layers(s, 2, 18), bed(s).tokens_per_s) for s in splits]
    model = fit_speed_model(obs, gemma_like_layout, 2)
    assert model.bandwidth_gb_per_s(0) == pytest.approx(9.0, rel=1e-3)
    assert model.bandwidth_gb_per_s(1) == pytest.approx(3.6, rel=1e-3)
    assert model.overhead_s == pytest.approx(0.004, rel=1e-2)
    assert model.overhead_identified


def test_alone_runs_only_leave_the_overhead_at_its_prior(gemma_like_layout) -> None:
    bed = SyntheticBed(gemma_like_layout, [9.0, 3.6], 0.004)
    obs = [Observation(assign_layers(s, 2, 18), bed(s).tokens_per_s) for s in (Split((0,), (1.0,)), Split((1,), (1.0,)))]
    model = fit_speed_model(obs, gemma_like_layout, 2, prior_overhead_s=0.001)
    assert not model.overhead_identified
    assert model.overhead_s == pytest.approx(0.001, rel=1e-2)
    # bandwidth absorbs the difference, so each device alone is still predicted exactly
    for s, o in zip((Split((0,), (1.0,)), Split((1,), (1.0,))), obs, strict=True):
        assert model.tokens_per_s(assign_layers(s, 2, 18), gemma_like_layout) == pytest.approx(o.tokens_per_s, rel=1e-3)


@pytest.mark.parametrize(
    ("bw", "overhead_s", "free_gib"),
    [
        ((9.0, 3.6), 0.004, (24, 24)),  # both fit: the fast device alone wins
        ((3.6, 9.0), 0.002, (24, 24)),  # the fast device listed second
        ((9.0, 3.6), 0.004, (0.62, 24)),  # fast one too small for the output matrix: layers there, output on slow
        ((9.0, 3.6), 0.001, (24, 0.55)),  # slow one can hold a few layers only
        ((9.0, 8.0), 0.0005, (24, 24)),  # near-equal devices
    ],
)
def test_search_finds_the_true_best_within_four_runs(gemma_like_layout, bw, overhead_s, free_gib) -> None:
    devs = devices(*free_gib)
    bed = SyntheticBed(gemma_like_layout, list(bw), overhead_s)
    result = tune(gemma_like_layout, devs, bed, budget=4)
    assert result.runs == bed.runs <= 4
    assert result.best.tokens_per_s == pytest.approx(brute_force_best(gemma_like_layout, devs, bed), rel=1e-6)
    assert all(p.measured for p in result.points) and not any(p.measured for p in result.curve)
    assert all(fits(p.assignment, gemma_like_layout, devs, 4096, 1) for p in result.points)


def test_search_with_noise_stays_within_noise_of_the_best(gemma_like_layout) -> None:
    for seed in range(5):
        bed = SyntheticBed(gemma_like_layout, [9.0, 3.6], 0.004, noise=0.03, seed=seed)
        result = tune(gemma_like_layout, devices(24, 24), bed, budget=4)
        assert bed.true_tps(result.best.split) >= 0.94 * brute_force_best(gemma_like_layout, devices(24, 24), bed)


def test_gain_over_even_split_is_reported(gemma_like_layout) -> None:
    bed = SyntheticBed(gemma_like_layout, [9.0, 3.6], 0.004)
    result = tune(gemma_like_layout, devices(24, 24), bed, budget=4)
    data = result.to_json()
    even = bed.true_tps(Split((0, 1), (1.0, 1.0)))
    assert data["baselines"]["even"]["tokens_per_s"] == pytest.approx(even, rel=0.02)  # predicted by the fit
    assert data["gain_vs"]["even"] == pytest.approx(result.best.tokens_per_s / even, rel=0.02)
    assert set(data) >= {"best", "runs", "points"}
    assert set(data["best"]) >= {"tensor_split", "layers", "tokens_per_s"}
    assert data["runs"] == len([p for p in data["points"] if p["measured"]])


def test_device_error_stops_early_and_keeps_measurements(gemma_like_layout) -> None:
    bed = SyntheticBed(gemma_like_layout, [9.0, 3.6], 0.004, fail_on_run=2)
    result = tune(gemma_like_layout, devices(24, 24), bed, budget=4)
    assert result.stopped and "RPC connection lost" in result.stopped
    assert result.runs == 1 and result.best.phase == "alone"


def test_model_too_big_for_all_devices_is_a_clear_error(gemma_like_layout) -> None:
    tiny = devices(0.3, 0.3)  # weights alone are 0.23 GiB, each device also needs its compute reserve
    assert 0.1 * GiB < COMPUTE_RESERVE_BYTES
    with pytest.raises(GpumixError, match="does not fit"):
        tune(gemma_like_layout, tiny, SyntheticBed(gemma_like_layout, [9.0, 3.6], 0.004))


def test_throughput_objective_fits_aggregate_tokens(gemma_like_layout) -> None:
    bed = SyntheticBed(gemma_like_layout, [9.0, 3.6], 0.004)
    result = tune(gemma_like_layout, devices(24, 24), bed, budget=3, objective="throughput", parallel=4)
    assert result.to_json()["objective"] == "throughput" and result.parallel == 4
    # the fitted curve reproduces every measured aggregate figure (the fit runs on per-step times × parallel)
    curve = {p.assignment.key(): p.tokens_per_s for p in result.curve}
    for p in result.points:
        assert curve[p.assignment.key()] == pytest.approx(p.tokens_per_s, rel=1e-3)


def test_cpu_offload_search_fills_the_small_device_first(gemma_like_layout) -> None:
    """One fast device too small for the whole model + the host CPU: the best is the most layers that fit on it
    (here every layer and the output need 0.23 GiB + reserve; 0.6 GiB fits the output and some layers)."""

    class WithHost(SyntheticBed):
        def true_tps(self, split):
            a = assign_layers(split, 1, self.layout.n_layers)
            bws = self.bw + [1.5e9]  # host CPU last
            return 1.0 / sum(b / bws[i] + self.o for i, b in device_loads(a, self.layout).items())

    devs = devices(0.6)
    bed = WithHost(gemma_like_layout, [20.0], 0.001)
    result = tune(gemma_like_layout, devs, bed, budget=4, host_offload=True)
    best_possible = max(
        bed.true_tps(Split((0,), (1.0,), k)) for k in range(19)
        if fits(assign_layers(Split((0,), (1.0,), k), 1, 18), gemma_like_layout, devs, 4096, 1)
    )  # fmt: skip
    assert result.runs <= 4 and result.best.tokens_per_s == pytest.approx(best_possible, rel=1e-6)
    assert result.best.split.n_gpu_layers < 19  # a partial offload


def test_cfs_quota_keeps_the_share_and_the_kernel_minimum() -> None:
    from gpumix.tune.testbed import cfs_quota_period_us

    assert cfs_quota_period_us(0.4) == (2000, 5000)
    quota, period = cfs_quota_period_us(0.1)
    assert quota >= 1000 and quota / period == pytest.approx(0.1)


def test_a_run_caught_in_a_busy_moment_is_rechecked(gemma_like_layout) -> None:
    """The fast device's alone run is measured at half speed once (another process had its core): the model
    disagrees with it, the spare budget re-measures it, and the fast device alone still wins."""

    class Unlucky(SyntheticBed):
        def __call__(self, split):
            r = super().__call__(split)
            if self.runs == 1:
                return BenchResult(r.tokens_per_s / 2, 0.0, 0, 32, (), "", "", 99, 0)
            return r

    bed = Unlucky(gemma_like_layout, [9.0, 3.6], 0.004)
    result = tune(gemma_like_layout, devices(24, 24), bed, budget=4)
    assert [p.phase for p in result.points].count("recheck") == 1 and result.runs == 4
    assert result.best.assignment == assign_layers(Split((0,), (1.0,)), 2, 18)
