"""One definition of "fits": `gpumix estimate` and `gpumix plan` apply the same free − margin test."""

from __future__ import annotations

import pytest

from gpumix.estimate import Placement, Workload, estimate
from gpumix.estimate.memory import GPU_MARGIN_BYTES, usable_bytes
from gpumix.hardware.catalog import resolve_gpu
from gpumix.hardware.devices import device_from_spec
from gpumix.models.catalog import load_model, resolve_quant
from gpumix.plan.planner import plan_services
from gpumix.plan.spec import parse_plan_text
from gpumix.units import GB, MiB


def _need_bytes() -> int:
    """Memory Llama 3.1 8B Q4_K_M needs alone on an RTX 4090 (the plan below's service)."""
    device = device_from_spec(resolve_gpu("RTX 4090"), 0)
    single = Placement(mode="single", devices=(device,))
    workload = Workload(context=4096, parallel=1, kv_unified=False)
    result = estimate(load_model("llama-3.1-8b"), resolve_quant("q4_k_m"), single, workload)
    return result.devices[0].memory_bytes


@pytest.mark.parametrize("headroom_mib, fits", [(512, False), (1536, True)])
def test_estimate_and_plan_agree_when_the_model_fits_raw_free_memory_but_not_the_margin(headroom_mib, fits):
    need = _need_bytes()
    free = need + headroom_mib * MiB  # above the need either way: the old estimator said "fits" for both
    device = device_from_spec(resolve_gpu("RTX 4090"), 0, free_bytes=free)
    workload = Workload(context=4096, parallel=1, kv_unified=False)
    result = estimate(load_model("llama-3.1-8b"), resolve_quant("q4_k_m"), Placement(mode="single", devices=(device,)),
                      workload)  # fmt: skip
    assert result.devices[0].memory_bytes == need and need < device.memory_free_bytes
    assert result.devices[0].memory_usable_bytes == usable_bytes(device) == free - GPU_MARGIN_BYTES
    assert result.fits is fits
    if not fits:
        assert result.devices[0].shortfall_bytes == need - (free - GPU_MARGIN_BYTES)
    spec = parse_plan_text(
        f"devices:\n  - {{gpu: RTX 4090, free_gb: {free / GB!r}}}\n"
        "services:\n  - {name: chat, model: llama-3.1-8b, quant: q4_k_m, engine: llama.cpp, context: 4096}\n"
    )
    plan = plan_services(spec)
    assert plan.feasible is fits
    if fits:
        assert plan.service("chat").memory_bytes == [need]
