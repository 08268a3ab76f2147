"""`--calibration` reaches every prediction of a plan: LLM decode (bandwidth, overhead) and the throughput of
non-LLM services (FLOP/s), through the planner, the split search and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

from gpumix.estimate.calibration import DeviceMeasurement, default_calibration
from gpumix.plan.planner import plan_services
from gpumix.plan.spec import parse_plan_text

PLAN = """\
devices:
  - gpu: RTX PRO 6000
services:
  - {name: chat, model: llama-3.1-8b, quant: q4_k_m, engine: llama.cpp}
  - {name: coder, model: qwen2.5-coder-32b, quant: q4_k_m, engine: llama.cpp}
  - {name: images, model: sdxl}
  - {name: embeddings, model: bge-m3}
  - {name: rerank, model: bge-reranker-v2-m3}
"""
# This machine's RTX PRO 6000 measured slower than the fitted model says (bandwidth, per-token overhead, FLOP/s).
MEASURED = DeviceMeasurement(match="rtx-pro-6000-blackwell", achieved_bandwidth_gb_per_s=600.0, per_token_overhead_s=0.004,
                             prefill_tflops=60.0)  # fmt: skip


def _speeds(plan) -> dict[str, float]:
    return {s.name: s.predicted.decode_tokens_per_s or s.predicted.throughput for s in plan.services}


def test_calibration_changes_every_prediction_of_a_plan(tmp_path):
    spec = parse_plan_text(PLAN)
    base = default_calibration()
    assert base.measurement_for(_device(spec)) is None
    default = plan_services(spec)
    tuned = plan_services(spec, calibration=base.model_copy(update={"measurements": (MEASURED,)}),
                          calibration_name="machine.json")  # fmt: skip
    assert default.feasible and tuned.feasible and tuned.calibration == "machine.json"
    before, after = _speeds(default), _speeds(tuned)
    assert all(v for v in before.values()) and set(before) == set(after)
    for name in before:
        assert after[name] < before[name], (name, before[name], after[name])  # slower card: every number drops
    assert tuned.service("chat").predicted.prefill_tokens_per_s < default.service("chat").predicted.prefill_tokens_per_s
    # The same through the CLI's --calibration file.
    plan_path, cal_path = tmp_path / "plan.yaml", tmp_path / "machine.json"
    plan_path.write_text(PLAN)
    cal_path.write_text(json.dumps({"format_version": 1, "devices": [{**MEASURED.model_dump(), "name": "RTX PRO 6000"}]}))
    run = subprocess.run([sys.executable, "-m", "gpumix", "plan", str(plan_path), "--json", "--calibration",
                          str(cal_path)], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    from_cli = json.loads(run.stdout)
    assert from_cli["calibration"] == str(cal_path)
    assert {s["name"]: s["predicted"]["decode_tokens_per_s"] or s["predicted"]["throughput"]
            for s in from_cli["services"]} == after  # fmt: skip


def _device(spec):
    from gpumix.plan.fleet import build_devices
    from gpumix.yaml_input import SourceLines

    return build_devices(spec, "<plan>", SourceLines())[0][0]
