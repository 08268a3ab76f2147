"""80 % prediction ranges on every estimate: present, ordered, and never beyond the bandwidth ceiling (issue 13)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpumix.estimate import Placement, Workload, estimate
from gpumix.estimate.calibration import PredictionBand, default_calibration
from gpumix.hardware.catalog import all_gpus, resolve_gpu
from gpumix.hardware.devices import device_from_spec
from gpumix.models.catalog import all_models, resolve_quant

GPUS = [g for g in all_gpus() if g.vram_bytes > 0]
LLMS = [m for m in all_models("llm") if m.n_layers > 0 and m.params_total < 80e9]
QUANTS = [resolve_quant(q) for q in ("q4_0", "q4_k_m", "q8_0", "f16")]
# A band far wider than any fitted one: the cap must hold however the calibration was derived.
WIDE = default_calibration().model_copy(update={"bands": {
    "decode": PredictionBand(low=0.2, high=5.0, n=1), "prefill": PredictionBand(low=0.2, high=5.0, n=1)}})  # fmt: skip


def test_the_packaged_calibration_gives_every_estimate_a_range() -> None:
    cal = default_calibration()
    assert {"decode", "prefill"} <= set(cal.bands) and "leave-GPU" in cal.band_method
    device = device_from_spec(resolve_gpu("RTX 4090"), index=0)
    est = estimate(LLMS[0], QUANTS[1], Placement(mode="single", devices=(device,)), Workload(context=2048))
    for name in ("decode_tokens_per_s", "aggregate_tokens_per_s", "prefill_tokens_per_s"):
        low, value, high = getattr(est, f"{name}_low"), getattr(est, name), getattr(est, f"{name}_high")
        assert low is not None and high is not None and low < value < high, name
    assert est.ttft_s_low is not None and est.ttft_s_high is not None
    assert est.ttft_s_low < est.ttft_s < est.ttft_s_high


def test_a_calibration_without_bands_gives_no_ranges() -> None:
    cal = default_calibration().model_copy(update={"bands": {}})
    device = device_from_spec(resolve_gpu("RTX 3090"), index=0)
    est = estimate(LLMS[0], QUANTS[1], Placement(mode="single", devices=(device,)), calibration=cal)
    assert est.decode_tokens_per_s_low is None and est.ttft_s_high is None


def test_backend_band_is_used_where_fitted_else_the_pooled_one() -> None:
    cal = default_calibration()
    for backend in ("CUDA", "Metal", "ROCm", "Vulkan", "CPU"):
        band = cal.band("decode", backend)
        assert band is not None
        assert band == cal.bands.get(f"decode.{backend}", cal.bands["decode"])


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    gpu=st.sampled_from(GPUS), count=st.integers(1, 3), model=st.sampled_from(LLMS), quant=st.sampled_from(QUANTS),
    context=st.sampled_from([512, 4096, 32768]), parallel=st.integers(1, 8), wide=st.booleans(),
)  # fmt: skip
def test_upper_bound_never_beats_the_bandwidth_ceiling(gpu, count, model, quant, context, parallel, wide) -> None:
    """Over random cards and models: decode_high <= bytes / peak bandwidth, the aggregate's upper bound is capped by
    the same factor, and every range is ordered."""
    devices = tuple(device_from_spec(gpu, index=i, total_bytes=max(gpu.vram_bytes, 2**40)) for i in range(count))
    placement = Placement(mode="single" if count == 1 else "layer_split", devices=devices)
    cal = WIDE if wide else default_calibration()
    est = estimate(model, quant, placement, Workload(context=context, parallel=parallel), calibration=cal)
    assert est.decode_tokens_per_s_high is not None and est.decode_tokens_per_s_low is not None
    assert est.decode_tokens_per_s_high <= est.bandwidth_bound_tokens_per_s * (1 + 1e-9)
    assert est.decode_tokens_per_s_low <= est.decode_tokens_per_s_high
    ceiling_factor = est.bandwidth_bound_tokens_per_s / est.decode_tokens_per_s
    assert est.aggregate_tokens_per_s_high is not None
    assert est.aggregate_tokens_per_s_high <= est.aggregate_tokens_per_s * ceiling_factor * (1 + 1e-9)
    assert est.prefill_tokens_per_s_low is not None and est.prefill_tokens_per_s_high is not None
    assert est.prefill_tokens_per_s_low < est.prefill_tokens_per_s_high
    assert est.ttft_s_low is not None and est.ttft_s_high is not None and est.ttft_s_low < est.ttft_s_high
    if wide:  # the 5x band is cut at the ceiling, never passed through
        expected = min(est.bandwidth_bound_tokens_per_s, 5.0 * est.decode_tokens_per_s)
        assert est.decode_tokens_per_s_high == pytest.approx(expected)


def test_replicas_combine_their_ranges_as_their_speeds() -> None:
    """Replicas: the slowest replica's stream range, the summed aggregate range (so replica plans show ranges too)."""
    from gpumix.estimate.estimator import combine_replicas

    model, quant = LLMS[0], QUANTS[1]
    singles = [estimate(model, quant, Placement(mode="single", devices=(device_from_spec(resolve_gpu(g), index=i),)),
                        Workload(context=2048)) for i, g in enumerate(("RTX 4090", "RTX 3060 12GB"))]  # fmt: skip
    both = combine_replicas(singles)
    assert both.decode_tokens_per_s_low == min(s.decode_tokens_per_s_low for s in singles)  # type: ignore[type-var]
    assert both.aggregate_tokens_per_s_high == pytest.approx(sum(s.aggregate_tokens_per_s_high for s in singles))  # type: ignore[misc]
    assert both.ttft_s_high == max(s.ttft_s_high for s in singles)  # type: ignore[type-var]
    no_bands = [s.model_copy(update={"decode_tokens_per_s_low": None}) for s in singles]
    assert combine_replicas(no_bands).decode_tokens_per_s_low is None


def test_prefill_alu_term_costs_more_where_the_tensor_peak_dwarfs_the_alus() -> None:
    """The fitted prefill ALU term (ops per weight on the FP32 ALUs) lowers the share of tensor peak reached on an
    A30 (tensor 16x its ALUs) more than on an RTX 3090 (4x); without the term both reach the same share."""
    cal = default_calibration()
    assert cal.prefill_ops_per_weight and max(cal.prefill_ops_per_weight.values()) > 0
    model, quant = next(m for m in LLMS if m.id == "llama-2-7b"), resolve_quant("q4_0")
    work = Workload(context=512, prompt_tokens=512)

    def share(name: str, calibration) -> float:  # type: ignore[no-untyped-def]
        spec = resolve_gpu(name)
        placement = Placement(mode="single", devices=(device_from_spec(spec, index=0),))
        est = estimate(model, quant, placement, work, calibration=calibration)
        return est.prefill_tokens_per_s / (spec.matrix_tflops or 1)

    without = cal.model_copy(update={"prefill_ops_per_weight": {}})
    assert share("A30", cal) / share("RTX 3090", cal) < share("A30", without) / share("RTX 3090", without)
