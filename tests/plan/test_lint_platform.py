"""Lint GPX018-GPX021: power supply, driver branch per architecture, CUDA + ROCm in one split, one model served twice
while another service waits. Each fires when it should and stays silent when it should not."""

from __future__ import annotations

import pytest

from gpumix.errors import GpumixError
from gpumix.plan.planner import plan_services
from gpumix.plan.result import Plan, Warning_
from gpumix.plan.spec import parse_plan_text_with_lines


def _plan(text: str) -> Plan:
    spec, lines = parse_plan_text_with_lines(text, "t.yaml")
    return plan_services(spec, lines=lines, source="t.yaml", advise=False)


def _warnings(plan: Plan, code: str) -> list[Warning_]:
    return [w for w in plan.warnings if w.code.startswith(code)]


HYBRID = "devices:\n  - gpu: RTX 4090\n  - gpu: RTX 5060 Ti 16GB\n{cpu}services:\n  - {{name: c, model: llama-3.1-8b, quant: q4_k_m}}\n{psu}"


def test_gpx018_psu_below_steady_draw_is_an_error():
    plan = _plan(HYBRID.format(cpu="", psu="psu_w: 850\n"))
    (w,) = _warnings(plan, "GPX018")
    # 450 (4090) + 180 (5060 Ti) + 142 (CPU assumed) + 150 (rest) = 922 W > 850 W.
    assert w.code == "GPX018-psu-undersized" and w.severity == "error"
    assert "922 W at full load" in w.message and "850 W" in w.message and "(assumed)" in w.message


def test_gpx018_transients_over_the_psu_are_a_warning_and_a_big_psu_is_silent():
    plan = _plan(HYBRID.format(cpu="  - cpu: {model: Ryzen 9 7950X, ram_gb: 64}\n", psu="psu_w: 1000\n"))
    (w,) = _warnings(plan, "GPX018")
    # Steady 450 + 180 + 230 (7950X PPT) + 150 = 1010 W > 1000: an error too; with 1100 W only the spikes exceed.
    assert w.severity == "error" and "CPU 230 W" in w.message
    spikes = _plan(HYBRID.format(cpu="  - cpu: {model: Ryzen 9 7950X, ram_gb: 64}\n", psu="psu_w: 1100\n"))
    (w,) = _warnings(spikes, "GPX018")
    assert w.severity == "warning" and "transients" in w.message and "~600 W" in w.message
    assert "1220 W" in w.message  # 630 x 4/3 + 230 + 150
    assert not _warnings(_plan(HYBRID.format(cpu="", psu="psu_w: 1600\n")), "GPX018")
    assert not _warnings(_plan(HYBRID.format(cpu="", psu="")), "GPX018")  # no PSU declared: nothing to check


def test_gpx018_per_host_psus_and_unknown_hosts():
    fleet = ("devices:\n  - {gpu: RTX 4090, host: a}\n  - {gpu: RTX 4090, host: a}\n  - {gpu: RTX 3060 12GB, host: b}\n"
             "services:\n  - {name: c, model: llama-3.1-8b, quant: q4_k_m}\n")  # fmt: skip
    # a: 900 + 142 + 150 = 1192 W > 1000 W (the top-level PSU); b: 170 + 142 + 150 = 462 W, spikes 519 W < 650 W.
    plan = _plan(fleet + "psu_w: 1000\nhosts: {b: {psu_w: 650}}\n")
    messages = [w.message for w in _warnings(plan, "GPX018")]
    assert len(messages) == 1 and messages[0].startswith("host a:") and "1192 W" in messages[0]
    plan = _plan(fleet + "psu_w: 1600\nhosts: {b: {psu_w: 400}}\n")
    assert [w.message.split(":")[0] for w in _warnings(plan, "GPX018")] == ["host b"]
    with pytest.raises(GpumixError, match=r"t.yaml:\d+: hosts.c: no device is on host 'c'"):
        _plan(fleet + "hosts: {c: {psu_w: 400}}\n")


@pytest.mark.parametrize(("card", "driver", "fires"), [
    ("RTX 5060 Ti 16GB", "550.54.15", True),  # Blackwell needs CUDA 12.8: >= 570.26
    ("RTX 5060 Ti 16GB", "570.133.07", False),
    ("RTX 4090", "515.65.01", True),  # Ada needs CUDA 11.8: >= 520.61.05
    ("RTX 4090", "525.60.13", False),
    ("RTX 3090", "450.80.02", True),  # GA102 (8.6) needs CUDA 11.1: >= 455.23
    ("RTX 3090", "470.256.02", False),
])  # fmt: skip
def test_gpx019_driver_too_old_for_the_architecture(card, driver, fires):
    plan = _plan(f"devices:\n  - {{gpu: {card}, driver: '{driver}'}}\nservices:\n"
                 "  - {name: c, model: llama-3.1-8b, quant: q4_k_m}\n")  # fmt: skip
    found = _warnings(plan, "GPX019")
    assert bool(found) == fires
    if fires:
        assert found[0].severity == "error" and driver in found[0].message and "device gpu0" in found[0].message


def test_gpx019_silent_without_a_driver_or_for_non_nvidia_cards():
    plan = _plan("devices:\n  - gpu: RTX 5060 Ti 16GB\n  - {gpu: Radeon RX 7900 XTX, driver: '6.3.1'}\nservices:\n"
                 "  - {name: c, model: llama-3.1-8b, quant: q4_k_m}\n")  # fmt: skip
    assert not _warnings(plan, "GPX019")


def test_gpx020_cuda_and_rocm_cards_in_one_llama_cpp_split():
    mixed = _plan("devices:\n  - gpu: RTX 3090\n  - gpu: Radeon RX 7900 XTX\nservices:\n"
                  "  - {name: c, model: llama-3.3-70b, quant: q4_k_m, context: 4096}\n")  # fmt: skip
    chat = mixed.service("c")
    assert chat.mode == "layer_split" and len(chat.devices) == 2
    (w,) = _warnings(mixed, "GPX020")
    assert w.code == "GPX020-cuda-rocm-split" and "Vulkan" in w.message and "CUDA: RTX 3090" in w.message
    assert "ROCm: Radeon RX 7900 XTX" in w.message
    same_vendor = _plan("devices:\n  - gpu: RTX 3090\n  - gpu: RTX 4090\nservices:\n"
                        "  - {name: c, model: llama-3.3-70b, quant: q4_k_m, context: 4096}\n")  # fmt: skip
    assert same_vendor.service("c").mode == "layer_split" and not _warnings(same_vendor, "GPX020")
    apart = _plan("devices:\n  - gpu: RTX 3090\n  - gpu: Radeon RX 7900 XTX\nservices:\n"
                  "  - {name: a, model: llama-3.1-8b, quant: q4_k_m}\n  - {name: b, model: qwen2.5-7b, quant: q4_k_m}\n")  # fmt: skip
    assert not _warnings(apart, "GPX020")  # each on its own card: no split, no problem


TWICE = ("devices:\n  - gpu: RTX 3060 12GB\n  - gpu: RTX 3060 12GB\nservices:\n"
         "  - {name: chat-a, model: llama-3.1-8b, quant: q8_0}\n  - {name: chat-b, model: llama-3.1-8b, quant: q8_0}\n")  # fmt: skip


def test_gpx021_one_model_twice_while_another_service_waits():
    # Whisper (4.5 GB) does not fit beside an 8B q8_0 (9.1 GB) on a 12 GB card (11.8 GB usable); it is the smaller,
    # so it is the one left out.
    plan = _plan(TWICE + "  - {name: transcribe, model: whisper-large-v3}\n")
    assert not plan.feasible and plan.service("transcribe").devices == []
    (w,) = _warnings(plan, "GPX021")
    assert w.code == "GPX021-duplicate-model-crowds-out" and "chat-a and chat-b" in w.message
    assert "transcribe found no room" in w.message and "gpu0, gpu1" in w.message
    assert not _warnings(_plan(TWICE), "GPX021")  # nobody waits: two copies are the user's choice
