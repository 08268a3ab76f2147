"""Plan-file validation: every mistake is one GpumixError naming file, line, field (and a suggestion); never a
traceback, also for fuzzed input."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpumix.errors import GpumixError
from gpumix.plan.planner import plan_services
from gpumix.plan.spec import PlanSpec, parse_plan_text, parse_plan_text_with_lines

GOOD = """\
devices:
  - gpu: RTX 4090
  - gpu: RTX 5060 Ti 16GB
services:
  - name: chat
    model: llama-3.1-8b
    quant: q4_k_m
    context: 8192
"""


def _error(text: str) -> str:
    with pytest.raises(GpumixError) as info:
        parse_plan_text(text, "box.yaml")
    return str(info.value)


def test_good_file_parses():
    spec = parse_plan_text(GOOD, "box.yaml")
    assert [d.gpu for d in spec.devices] == ["RTX 4090", "RTX 5060 Ti 16GB"]
    assert spec.services[0].context == 8192


def test_unknown_key_names_line_field_and_suggestion():
    message = _error(GOOD.replace("    quant: q4_k_m", "    qaunt: q4_k_m"))
    assert message.startswith("box.yaml:7: unknown key 'services[0].qaunt'; did you mean 'quant'?")


def test_bad_value_names_its_line():
    message = _error(GOOD.replace("context: 8192", "context: lots"))
    assert message.startswith("box.yaml:8: services[0].context:") and "'lots'" in message


def test_impossible_value_and_literal_suggestion():
    assert "greater than 0" in _error(GOOD.replace("  - gpu: RTX 4090\n", "  - gpu: RTX 4090\n    free_gb: -1\n"))
    message = _error(GOOD + "    mode: tensor-parallel\n")
    assert message.startswith("box.yaml:9: services[0].mode:") and "did you mean 'tensor_parallel'" in message


def test_duplicate_names_and_keys():
    assert "box.yaml:9: services[1].name: 'chat' is used twice" in _error(GOOD + "  - name: chat\n    model: x\n")
    assert "appears twice" in _error(GOOD + "    context: 4096\n")


def test_unknown_gpu_and_model_name_the_line():
    spec_text = GOOD.replace("gpu: RTX 5060 Ti 16GB", "gpu: RTX 5060 Tie")
    spec, lines = parse_plan_text_with_lines(spec_text)
    with pytest.raises(GpumixError, match=r"^<plan>:3: devices\[1\]\.gpu: unknown GPU"):
        plan_services(spec, lines=lines)
    spec, lines = parse_plan_text_with_lines(GOOD.replace("llama-3.1-8b", "llama-9.9-8b"))
    with pytest.raises(GpumixError, match=r"^<plan>:6: services\[0\]\.model:"):
        plan_services(spec, lines=lines)


def test_not_a_mapping_and_not_yaml():
    assert "a plan file is a mapping" in _error("- a\n- b\n")
    assert _error("services: [\n").startswith("box.yaml:")


_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True),
                     st.text(max_size=12), st.sampled_from(["RTX 4090", "llama-3.1-8b", "fp8", "auto", "latency"]))  # fmt: skip
_KEYS = st.sampled_from(
    ["devices", "services", "links", "prices", "gpu", "cpu", "name", "model", "quant", "engine", "context",
     "concurrency", "mode", "slo", "free_gb", "ram_gb", "index", "host", "replicas", "objective", "qaunt", "x"]
)  # fmt: skip
_TREES = st.recursive(_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(_KEYS, inner, max_size=5)), max_leaves=20)  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_TREES)
def test_fuzzed_files_give_clear_errors_never_tracebacks(tree):
    text = yaml.safe_dump(tree)
    try:
        spec = parse_plan_text(text, "fuzz.yaml")
    except GpumixError as exc:
        assert str(exc).startswith("fuzz.yaml")
        return
    assert isinstance(spec, PlanSpec)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_fuzzed_text_gives_clear_errors(text):
    try:
        parse_plan_text(text, "fuzz.yaml")
    except GpumixError as exc:
        assert str(exc).startswith("fuzz.yaml")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    gpu=st.sampled_from(["RTX 4090", "4090", "RTX 3060", "RTX 50", "H100", "nonsense"]),
    model=st.sampled_from(["llama-3.1-8b", "sdxl", "bge-m3", "llama-3.3-70b", "nope-7b"]),
    quant=st.sampled_from(["q4_k_m", "fp8", "awq", "q9_z", "f16"]),
    engine=st.sampled_from([None, "llama.cpp", "vllm", "tei"]),
    context=st.sampled_from([256, 8192, 131072, 10_000_000]),
    mode=st.sampled_from(["auto", "single", "layer_split", "tensor_parallel", "replica", "cpu_offload"]),
)
def test_fuzzed_plans_plan_or_explain_why(gpu, model, quant, engine, context, mode):
    text = (f"devices:\n  - gpu: {gpu}\n  - gpu: RTX 3060 12GB\nservices:\n  - name: s\n    model: {model}\n"
            f"    quant: {quant}\n    context: {context}\n    mode: {mode}\n")  # fmt: skip
    if engine:
        text += f"    engine: {engine}\n"
    try:
        spec, lines = parse_plan_text_with_lines(text, "f.yaml")
        plan = plan_services(spec, lines=lines, source="f.yaml")
    except GpumixError as exc:
        assert str(exc).startswith("f.yaml:"), str(exc)
        return
    assert plan.feasible or plan.reasons
