"""vLLM's tensor-parallel and pipeline-parallel launch paths for real: examples/cpu-vllm-parallel.yaml under
`gpumix up` — two CPU devices (one core each), a TP=2 service (Gemma 3 270M) and a PP=2 service (SmolLM2 135M).

What vLLM 0.32's CPU build does with them (README, "vLLM"): both start with the ranks, core binding, layer
partition and KV gpumix renders; TP=2 serves; PP=2 crashes its engine on the first request inside vLLM's scheduler
(`KeyError` in `update_from_output`, vLLM issue #32701, fix pending upstream), and the supervisor restarts it.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import psutil
import pytest

from gpumix.launch.vllm_install import find_vllm
from gpumix.netutil import free_port
from gpumix.run.state import read_state
from gpumix.run.up import UpOptions, start_detached, stop

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def _workers(pid: int) -> list[str]:
    return sorted(p.name() for p in psutil.Process(pid).children(recursive=True) if p.name().startswith("VLLM::Worker"))


def test_tensor_and_pipeline_parallel_vllm_services_start_with_the_planned_ranks(tmp_path):
    if find_vllm("cpu") is None:
        pytest.skip("gpumix's vLLM venv is not installed (`make vllm` or `gpumix engines install vllm`; `make test` does it)")
    from runhelpers import EXAMPLES

    from gpumix.plan.planner import plan_file

    plan = plan_file(EXAMPLES / "cpu-vllm-parallel.yaml")
    assert plan.feasible, plan.reasons
    tp, pp = plan.service("chat-tp"), plan.service("chat-pp")
    assert (tp.mode, pp.mode) == ("tensor_parallel", "pipeline_parallel") and len(pp.layers) == 2
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(plan.model_dump_json())
    run_dir = tmp_path / "run"
    try:
        state = start_detached(plan_path, UpOptions(run_dir=run_dir, front_port=free_port(), health_timeout_s=900))
        tp_proc, pp_proc = state.process("chat-tp"), state.process("chat-pp")
        assert _workers(tp_proc.pid) == ["VLLM::Worker_TP0", "VLLM::Worker_TP1"]
        assert _workers(pp_proc.pid) == ["VLLM::Worker_PP0", "VLLM::Worker_PP1"]
        assert pp_proc.env["VLLM_PP_LAYER_PARTITION"] == ",".join(map(str, pp.layers))
        for proc in (tp_proc, pp_proc):
            assert proc.env["VLLM_CPU_OMP_THREADS_BIND"] == "0|1"
            log = Path(proc.log).read_text(errors="replace")
            assert "local_rank=0, core ids=[0]" in log and "local_rank=1, core ids=[1]" in log
            assert re.search(r"CPU KV cache size: [\d,]+ tokens, Maximum concurrency for 1,024 tokens per request", log)
        # TP=2 answers (Gemma 3 270M is a base model without a chat template: a plain completion).
        reply = httpx.post(f"{tp_proc.url}/v1/completions", json={"model": "chat-tp", "prompt": "The capital of France is",
                           "max_tokens": 8, "temperature": 0}, timeout=300)  # fmt: skip
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 8
        assert re.search(r"[A-Za-z]{3}", reply.json()["choices"][0]["text"])
        # PP=2: vLLM's own scheduler bug on the first request; recorded, not hidden.
        reply = httpx.post(f"{pp_proc.url}/v1/completions", json={"model": "chat-pp", "prompt": "The capital of France is",
                           "max_tokens": 8, "temperature": 0}, timeout=300)  # fmt: skip
        if reply.status_code != 200:
            time.sleep(2)
            log = Path(pp_proc.log).read_text(errors="replace")
            assert "in update_from_output" in log and "KeyError" in log, log[-3000:]
            assert read_state(run_dir).process("chat-tp").restarts == 0
            pytest.xfail("vLLM 0.32 CPU, PP=2: EngineCore KeyError in Scheduler.update_from_output (vLLM #32701)")
        assert reply.json()["usage"]["completion_tokens"] == 8
    finally:
        stop(run_dir)
