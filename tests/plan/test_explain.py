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

    plan, alternatives = explain(path, "chat", discover=LocalMachine(gpus=gpus, cpu=cpu))
    assert calls == [1] and plan.service("chat").devices == ["gpu0"]
    assert any(a.chosen for a in alternatives) and len(alternatives) >= 2
    with pytest.raises(GpumixError, match="the plan file has no `devices:`"):
        explain(path, "chat")  # the core never reads this machine by itself
