"""Re-planning after a host died (gpumix.plan.replan): the lost services on what is left, memory already booked,
pins to the dead host relaxed, a replica never beside another copy; and CPU replicas spread over hosts."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpumix.errors import GpumixError
from gpumix.plan.fleet import build_devices
from gpumix.plan.planner import plan_file
from gpumix.plan.replan import LostService, lost_entry, remaining_devices, replan_services
from gpumix.plan.spec import load_plan_with_lines, parse_plan_text
from gpumix.yaml_input import SourceLines

FLEET = Path(__file__).parents[2] / "examples" / "cpu-fleet.yaml"
GB = 10**9


@pytest.fixture(scope="module")
def fleet():
    spec, lines = load_plan_with_lines(FLEET)
    devices, _ = build_devices(spec, str(FLEET), lines)
    return spec, devices


def test_the_cpu_fleet_puts_one_chat_replica_on_each_host_and_embed_on_b():
    plan = plan_file(FLEET)
    chat, embed = plan.service("chat"), plan.service("embed")
    assert plan.feasible and chat.mode == "replica" and sorted(chat.devices) == ["a/cpu0", "b/cpu0"]
    assert chat.threads == 1 and chat.n_gpu_layers == 0 and len(chat.memory_bytes) == 2
    assert embed.devices == ["b/cpu0"] and embed.model == chat.model and embed.model_path == chat.model_path


def test_remaining_devices_drop_the_dead_host_and_book_what_runs(fleet):
    _spec, devices = fleet
    left = remaining_devices(devices, {"b"}, {"a/cpu0": 300_000_000, "b/cpu0": 5})
    assert [d.id for d in left] == ["a/cpu0"]
    (a,) = left
    original = next(d for d in devices if d.id == "a/cpu0")
    assert a.memory_free_bytes == original.memory_free_bytes - 300_000_000
    assert remaining_devices(devices, {"b"}, {"a/cpu0": 10 * GB})[0].memory_free_bytes == 0  # never negative


def test_a_lost_service_pinned_to_the_dead_host_moves_to_a_survivor(fleet):
    spec, devices = fleet
    left = remaining_devices(devices, {"b"}, {"a/cpu0": 313_696_768})
    plan = replan_services(spec, [LostService("embed")], left)
    embed = plan.service("embed")
    assert plan.feasible and embed.devices == ["a/cpu0"] and embed.host == "a"
    assert embed.endpoints == ["/v1/embeddings"] and embed.threads == 1


def test_a_lost_replica_is_not_put_beside_its_surviving_copy(fleet):
    spec, devices = fleet
    left = remaining_devices(devices, {"b"}, {"a/cpu0": 313_696_768})
    plan = replan_services(spec, [LostService("chat", 1, avoid=("a/cpu0",)), LostService("embed")], left)
    assert plan.service("chat").devices == [] and plan.service("embed").devices == ["a/cpu0"]
    assert len(plan.reasons) == 1 and plan.reasons[0].startswith("chat ")


def test_booked_memory_counts(fleet):
    """With host a's RAM nearly all booked, embed (~0.8 GB) no longer fits there and the reason says why."""
    spec, devices = fleet
    left = remaining_devices(devices, {"b"}, {"a/cpu0": int(3.5 * GB)})
    plan = replan_services(spec, [LostService("embed")], left)
    assert plan.service("embed").devices == [] and not plan.feasible


def test_lost_entry_relaxes_pins_and_keeps_the_rest():
    spec = parse_plan_text(
        "devices:\n  - {gpu: RTX 4090, host: a}\n  - {gpu: RTX 4090, host: b}\n  - {gpu: RTX 3090, host: c}\n"
        "services:\n  - {name: chat, model: llama-3.1-8b, quant: q4_k_m, replicas: 2, mode: replica, fallback: small,"
        " devices: [b/gpu0, c/gpu0]}\n  - {name: small, model: gemma-3-1b, quant: q8_0, host: b}\n"
    )
    devices, _ = build_devices(spec, "<t>", SourceLines())
    left = remaining_devices(devices, {"b"}, {})
    # b/gpu0 died and c/gpu0 holds the surviving copy: the pin to the dead host is relaxed to what is left
    entry = lost_entry(spec.services[0], LostService("chat", 1, avoid=("c/gpu0",)), left)
    assert entry.devices == ["a/gpu0"] and entry.replicas == 1 and entry.mode == "auto"
    assert entry.fallback is None and entry.host is None and entry.model == "llama-3.1-8b"
    small = lost_entry(spec.services[1], LostService("small"), left)
    assert small.host is None and small.devices == ["a/gpu0", "c/gpu0"]
    plan = replan_services(spec, [LostService("chat", 1, avoid=("c/gpu0",)), LostService("small")], left)
    assert plan.service("chat").devices == ["a/gpu0"] and plan.service("chat").mode == "single"
    assert plan.service("small").devices[0] in ("a/gpu0", "c/gpu0")


def test_replan_of_an_unknown_service_is_an_error(fleet):
    spec, devices = fleet
    with pytest.raises(GpumixError, match="not a service of the plan file"):
        replan_services(spec, [LostService("nope")], devices)
    with pytest.raises(GpumixError, match="no surviving device"):
        replan_services(spec, [LostService("embed")], [])


def test_a_stand_in_is_sized_for_the_streams_it_replaces():
    """A lost replica that served 3 of a service's 8 streams is re-planned for 3 streams (its KV sized for them),
    not for the service's 8."""
    spec = parse_plan_text(
        "devices:\n  - {cpu: {ram_gb: 8, threads: 1}, host: a}\n  - {cpu: {ram_gb: 8, threads: 1}, host: b}\n"
        "services:\n  - {name: chat, model: gemma-3-270m, replicas: 2, mode: replica, concurrency: 8, context: 2048}\n"
    )
    devices, _ = build_devices(spec, "<t>", SourceLines())
    left = remaining_devices(devices, {"b"}, {})
    entry = lost_entry(spec.services[0], LostService("chat", 1, concurrency=3), left)
    assert entry.concurrency == 3 and entry.replicas == 1 and entry.devices == ["a/cpu0"]
    assert lost_entry(spec.services[0], LostService("chat", 1), left).concurrency == 8  # unknown: the file's
    plan = replan_services(spec, [LostService("chat", 1, concurrency=3)], left)
    assert plan.service("chat").devices == ["a/cpu0"] and plan.service("chat").concurrency == 3


def test_advice_for_a_service_that_may_use_no_device_is_a_reason_not_a_crash(fleet):
    """A stand-in that must avoid the only survivor has an empty device pool; the planner's advice (which sizes the
    roomiest host's GPUs) used to raise ValueError there."""
    from gpumix.plan.planner import plan_services

    spec, devices = fleet
    left = remaining_devices(devices, {"b"}, {"a/cpu0": 313_696_768})
    entry = lost_entry(next(e for e in spec.services if e.name == "chat"), LostService("chat", 1, avoid=("a/cpu0",)),
                       left)  # fmt: skip
    plan = plan_services(spec.model_copy(update={"services": [entry]}), devices=list(left))
    assert not plan.feasible and plan.service("chat").devices == []
    assert len(plan.reasons) == 1 and plan.reasons[0].startswith("chat ")
