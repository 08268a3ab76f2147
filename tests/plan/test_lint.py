"""Lint: each anti-pattern the planner can meet produces its stable code, and clean plans stay quiet."""

from __future__ import annotations

from gpumix.plan.planner import plan_services
from gpumix.plan.result import Plan
from gpumix.plan.spec import parse_plan_text_with_lines


def _plan(text: str) -> Plan:
    spec, lines = parse_plan_text_with_lines(text, "t.yaml")
    return plan_services(spec, lines=lines, source="t.yaml")


def _codes(plan: Plan) -> set[str]:
    return {w.code.split("-")[0] for w in plan.warnings}


PAIR = "devices:\n  - gpu: RTX 4090\n  - gpu: RTX 3090\n"


def test_forced_tensor_parallel_over_mismatched_cards():
    plan = _plan(PAIR + "services:\n  - {name: c, model: llama-3.1-8b, quant: fp8, mode: tensor_parallel}\n")
    assert plan.service("c").mode == "tensor_parallel"
    assert {"GPX001", "GPX004"} <= _codes(plan)


def test_forced_split_of_a_model_that_fits_one_card():
    plan = _plan(PAIR + "services:\n  - {name: c, model: llama-3.1-8b, quant: q4_k_m, mode: layer_split}\n")
    chat = plan.service("c")
    assert chat.mode == "layer_split" and chat.devices == ["gpu0", "gpu1"]  # fastest card first: no GPX003
    assert "GPX004" in _codes(plan) and "GPX003" not in _codes(plan)


def test_slow_link_split_and_cross_socket_tp():
    slow = _plan(PAIR + "links: {pcie_gen: 2, pcie_lanes: [16, 4]}\nservices:\n"
                 "  - {name: c, model: llama-3.3-70b, quant: q4_k_m, context: 4096}\n")  # fmt: skip
    assert slow.service("c").mode == "layer_split" and "GPX009" in _codes(slow)
    sys_tp = _plan("devices:\n  - {gpu: RTX 4090, socket: 0}\n  - {gpu: RTX 4090, socket: 1}\nservices:\n"
                   "  - {name: c, model: qwen2.5-32b, quant: fp8, context: 4096, mode: tensor_parallel}\n")  # fmt: skip
    assert "GPX011" in _codes(sys_tp)


def test_containers_drivers_and_slo():
    plan = _plan(
        "devices:\n  - {gpu: RTX 4090, driver: '570.1'}\n  - {gpu: RTX 3090, driver: '550.2'}\n"
        "runtime: {containers: true, container_gpus: all}\n"
        "services:\n  - {name: c, model: llama-3.1-8b, quant: q4_k_m, slo: {decode_tokens_per_s: 10000}}\n"
    )  # fmt: skip
    assert {"GPX007", "GPX008", "GPX012"} <= _codes(plan)
    (check,) = plan.service("c").slo
    assert not check.met and check.margin < -0.9


def test_declared_loads_bound_co_location_and_undeclared_ones_are_flagged():
    two = "devices:\n  - gpu: RTX 4090\nservices:\n  - {name: a, model: llama-3.2-3b, quant: q4_k_m, load: 0.8}\n"
    busy = _plan(two + "  - {name: b, model: llama-3.2-1b, quant: q4_k_m, load: 0.8}\n")
    assert not busy.feasible and "already busy" in busy.reasons[0]
    calm = _plan(two + "  - {name: b, model: llama-3.2-1b, quant: q4_k_m, load: 0.2}\n")
    assert calm.feasible and calm.device("gpu0").bandwidth_utilisation == 1.0
    unknown = _plan(two.replace(", load: 0.8", "") + "  - {name: b, model: llama-3.2-1b, quant: q4_k_m}\n")
    assert unknown.feasible and "GPX015" in _codes(unknown)


def test_clean_single_card_plan_has_no_warnings():
    plan = _plan(PAIR + "services:\n  - {name: c, model: llama-3.1-8b, quant: q4_k_m}\n")
    assert plan.warnings == [] and plan.service("c").devices == ["gpu0"]


def test_unpriced_card_gives_no_cost_and_says_which_card(tmp_path):
    from gpumix.plan.planner import plan_file

    plan_path = tmp_path / "p.yaml"
    plan_path.write_text(
        "devices:\n  - gpu: RTX 4090\n  - gpu: RTX 3090\n"
        "services:\n  - name: chat\n    model: llama-3.3-70b\n    quant: q4_k_m\n    context: 4096\n"
    )
    plan = plan_file(plan_path)
    assert plan.feasible and plan.cost.gbp_per_month is None
    (warning,) = [w for w in plan.warnings if w.code.startswith("GPX016")]
    assert "RTX 3090" in warning.message and "RTX 4090" not in warning.message
    plan_path.write_text(plan_path.read_text() + "prices:\n  RTX 3090: {gbp_per_month: 300}\n")
    priced = plan_file(plan_path)
    assert priced.cost.gbp_per_month == 575 + 300
    assert not [w for w in priced.warnings if w.code.startswith("GPX016")]
