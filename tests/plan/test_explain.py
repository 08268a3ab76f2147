"""`explain` reads the one planning run: no second resolution, no second discovery."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpumix.errors import GpumixError
from gpumix.hardware.catalog import resolve_gpu
from gpumix.hardware.devices import device_from_spec
from gpumix.hardware.entries import LocalMachine
from gpumix.plan.compare import explain

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _no_discovery(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args, **_kwargs):
        raise AssertionError("NVML discovery was called")

    monkeypatch.setattr("gpumix.hardware.discovery.discover_machine", refuse)
    monkeypatch.setattr("gpumix.hardware.discovery.this_machine_gpus", refuse)


def test_explain_of_a_plan_file_with_devices_never_discovers(monkeypatch):
    _no_discovery(monkeypatch)
    plan, alternatives = explain(EXAMPLES / "4090-3090-70b.yaml", "chat")
    (chosen,) = [a for a in alternatives if a.chosen]
    assert chosen.mode == plan.service("chat").mode and chosen.device_ids == plan.service("chat").devices
    assert chosen.layers == plan.service("chat").layers
    labels = {a.label for a in alternatives}
    assert "llama.cpp default split (-ts ∝ free memory)" in labels and "even split" in labels


def test_explain_discovers_a_device_less_plan_file_once(monkeypatch, tmp_path):
    _no_discovery(monkeypatch)
    path = tmp_path / "plan.yaml"
    path.write_text("services:\n  - {name: chat, model: llama-3.1-8b, quant: q4_k_m}\n")
    calls = []

    def gpus():
        calls.append(1)
        return [device_from_spec(resolve_gpu("RTX 4090"), 0), device_from_spec(resolve_gpu("RTX 3090"), 1)]

    def cpu():
        raise AssertionError("no cpu: entry, so this machine's RAM is never read")

    plan, alternatives = explain(path, "chat", discover=LocalMachine(devices=gpus, cpu=cpu))
    assert calls == [1] and plan.service("chat").devices == ["gpu0"]
    assert any(a.chosen for a in alternatives) and len(alternatives) >= 2
    with pytest.raises(GpumixError, match="the plan file has no `devices:`"):
        explain(path, "chat")  # the core never reads this machine by itself


def test_split_curve_comes_from_the_one_planning_run(monkeypatch):
    """The report's split-vs-speed curve: every split of the 70B's 80 layers over the 4090 + 3090, estimated as the
    planner estimates its options, so the planned split is the curve's fastest fitting point and equals the plan's
    prediction; llama.cpp's default split is the one `explain` lists."""
    from gpumix.plan.compare import alternatives, split_curve
    from gpumix.plan.planner import planning_of_file

    _no_discovery(monkeypatch)
    result = planning_of_file(EXAMPLES / "4090-3090-70b.yaml")
    curve = split_curve(result, "chat")
    assert curve is not None and curve.mode == "layer_split" and curve.n_layers == 80
    assert [d.id for d in curve.devices] == ["gpu0", "gpu1"] and len(curve.sweep) == 79
    svc = result.plan.service("chat")
    assert curve.planned.layers == svc.layers and curve.planned.chosen and curve.planned.fits
    chosen = result.chosen[result.index_of("chat")]
    assert chosen is not None and curve.planned.decode_tokens_per_s == chosen.decode  # the same estimate, exactly
    assert curve.planned.decode_tokens_per_s == pytest.approx(svc.predicted.decode_tokens_per_s, abs=0.005)
    fitting = [a.decode_tokens_per_s or 0.0 for a in curve.sweep if a.fits]
    assert (curve.planned.decode_tokens_per_s or 0.0) >= max(fitting) * 0.999
    assert not all(a.fits for a in curve.sweep)  # too many layers on one card do not fit: the curve shows where
    default = next(a for a in alternatives(result, "chat") if a.label.startswith("llama.cpp default"))
    assert curve.memory_proportional is not None and curve.memory_proportional.layers == default.layers
    assert curve.memory_proportional.decode_tokens_per_s == default.decode_tokens_per_s
    # a plan.json's own split is marked as planned; a service on one card has no curve
    other = svc.model_copy(update={"layers": [40, 40]})
    marked = split_curve(result, "chat", planned=other)
    assert marked is not None and marked.planned.layers == [40, 40]
    single = planning_of_file(EXAMPLES / "4090-3090-coder32b.yaml")
    assert split_curve(single, "coder") is None


def test_margin_of_a_plan_device_is_the_planners():
    from gpumix.estimate.memory import kind_margin_bytes, margin_bytes

    gpu = device_from_spec(resolve_gpu("RTX 4090"), 0)
    assert kind_margin_bytes("gpu", gpu.memory_total_bytes) == margin_bytes(gpu) == 2**30
    assert kind_margin_bytes("cpu", 8 * 2**30) == 2 * 2**30 and kind_margin_bytes("cpu", 64 * 2**30) == 4 * 2**30
