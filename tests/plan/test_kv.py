"""KV budgets (issue 9): vLLM's paged KV and llama.cpp's unified KV hold one pool per engine process, at least one full
context and at most concurrency × context, sized from what the cards leave; predictions use the sequences the pool
holds at full length; replicas share the streams; launch realises the budget.

Physics bounds: a decode step reads every weight once plus each held sequence's KV (at the estimator's average depth,
context / 2), so no replica's aggregate may beat held × peak bandwidth ÷ (weights + held × KV read)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpumix.errors import GpumixError
from gpumix.estimate import Placement, Workload, estimate
from gpumix.estimate.memory import kv_cache_bytes_per_token, service_memory, total_weight_bytes, usable_bytes
from gpumix.hardware.catalog import resolve_gpu
from gpumix.hardware.devices import device_from_spec
from gpumix.launch.commands import render_plan
from gpumix.models.catalog import load_model, resolve_quant
from gpumix.plan import kvmath
from gpumix.plan.planner import plan_file, plan_services, planning, planning_of_file
from gpumix.plan.result import Plan
from gpumix.plan.spec import parse_plan_text_with_lines
from gpumix.units import GB

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
GiB = 2**30


def _plan(text: str) -> Plan:
    spec, lines = parse_plan_text_with_lines(text, "t.yaml")
    return plan_services(spec, lines=lines, source="t.yaml")


def _codes(plan: Plan) -> set[str]:
    return {w.code.split("-")[0] for w in plan.warnings}


def _gpx017(plan: Plan, service: str) -> str:
    (warning,) = [w for w in plan.warnings if w.code == "GPX017-kv-below-concurrency" and w.service == service]
    return warning.message


def _bandwidth_bound(model_id: str, quant_id: str, gpu: str, held: int, context: int) -> float:
    """held × peak bandwidth ÷ (weights + held × KV bytes at depth context/2): the most tokens/s a card can decode."""
    model, quant = load_model(model_id), resolve_quant(quant_id)
    step_bytes = total_weight_bytes(model, quant) + held * kv_cache_bytes_per_token(model) * context / 2
    return held * resolve_gpu(gpu).mem_bandwidth_gb_per_s * GB / step_bytes


def _assert_fits(plan: Plan) -> None:
    for dev in plan.devices:
        assert dev.memory_planned_bytes <= dev.memory_free_bytes - GiB, dev.id


# ---------------------------------------------------------------- the hybrid box


def test_hybrid_box_holds_chat_kv_for_a_full_sequence_and_warns_with_the_streams_it_holds():
    plan = plan_file(EXAMPLES / "hybrid-box.yaml")
    assert plan.feasible and plan.optimal and all(s.devices for s in plan.services)
    chat = plan.service("chat")
    assert plan.device(chat.devices[0]).name == "RTX 4090" and chat.engine == "vllm"
    assert (chat.context, chat.concurrency) == (8192, 16)
    assert chat.kv_cache_tokens is not None and 8192 <= chat.kv_cache_tokens < 16 * 8192
    assert chat.kv_cache_tokens % kvmath.VLLM_BLOCK_TOKENS == 0  # whole vLLM blocks
    held = chat.kv_cache_tokens // 8192
    assert chat.max_full_context_sequences == held and chat.predicted.concurrency == held
    # The memory breakdown holds exactly that KV (Llama 3.1 8B, f16: 128 KiB per token).
    assert chat.memory_breakdown[0].kv_cache_bytes == chat.kv_cache_tokens * 128 * 1024
    # The pool took what the 4090 had left: less than one more 16-token block of room remains.
    gpu0 = plan.device(chat.devices[0])
    assert 0 <= gpu0.memory_free_bytes - GiB - gpu0.memory_planned_bytes < 16 * 128 * 1024
    message = _gpx017(plan, "chat")
    assert f"KV for {chat.kv_cache_tokens:,} tokens holds {held} sequence" in message
    assert "not the 16 its concurrency asks (16 × 8,192 = 131,072 tokens)" in message and "vLLM preempts" in message
    assert all(c.met for c in chat.slo)
    assert chat.predicted.aggregate_tokens_per_s <= _bandwidth_bound("llama-3.1-8b", "fp8", "RTX 4090", held, 8192)
    _assert_fits(plan)


def test_hybrid_box_as_the_scenario_writes_it_plans_with_the_images_in_their_low_memory_setting():
    """Issue 9's list (chat, SDXL, SDXL refiner, Whisper, BGE-M3, Llama Guard 3). At sd-server's defaults the six need
    more than 24 + 16 GiB minus the margins even with chat at one 8192-token sequence of KV; with SDXL and the refiner
    in sd-server's low-memory setting (flash attention, tiled VAE decode: the catalog's sourced buffers) they fit. The
    plan places every service, keeps chat on the 4090 with KV for at least one full sequence, and says what it chose
    (GPX017: the streams chat holds at full length; GPX022: the images' slower setting)."""
    result = planning_of_file(EXAMPLES / "hybrid-box-scenario.yaml")
    plan = result.plan
    # Exactly the issue's services, nothing added.
    assert [(s.entry.name, s.model.id) for s in result.services] == [
        ("chat", "llama-3.1-8b"), ("images", "sdxl-base"), ("refiner", "sdxl-refiner"),
        ("transcribe", "whisper-large-v3"), ("embeddings", "bge-m3"), ("guard", "llama-guard-3-8b")]  # fmt: skip
    chat_entry = result.spec.services[0]
    assert (chat_entry.quant, chat_entry.engine, chat_entry.context, chat_entry.concurrency) == ("fp8", "vllm", 8192, 16)
    usable = sum(usable_bytes(d) for d in result.devices)

    def least(options, allow_low: bool) -> int:
        return min(sum(o.memory_bytes) for o in options if allow_low or o.memory_setting != "low")

    assert sum(least(opts, allow_low=False) for opts in result.options) > usable  # at the defaults nothing holds all six
    assert sum(least(opts, allow_low=True) for opts in result.options) <= usable
    assert plan.feasible and all(s.devices for s in plan.services)
    chat = plan.service("chat")
    assert plan.device(chat.devices[0]).name == "RTX 4090"
    assert chat.kv_cache_tokens is not None and chat.kv_cache_tokens >= 8192
    held = chat.max_full_context_sequences
    assert held is not None and 1 <= held < 16
    assert f"holds {held} sequence" in _gpx017(plan, "chat")
    # The images run the low-memory setting with exactly the catalog's parts; the other side services their defaults.
    for index, name in ((1, "images"), (2, "refiner")):
        svc = plan.service(name)
        assert svc.memory_setting == "low"
        assert svc.memory_bytes == [service_memory(result.services[index].model, True, "low").total_bytes]
        (w,) = [w for w in plan.warnings if w.code == "GPX022-low-memory-setting" and w.service == name]
        assert "--vae-tiling" in w.message and "not measured" in w.message
    for index, name in ((3, "transcribe"), (4, "embeddings")):
        svc = plan.service(name)
        assert svc.memory_setting is None
        assert svc.memory_bytes == [service_memory(result.services[index].model, True).total_bytes]
    _assert_fits(plan)


def test_memory_default_forces_sd_servers_defaults_and_then_a_service_does_not_fit():
    """`memory: default` on both image services: the plan keeps their faster defaults, so one side service is left
    out (named, with the reason), chat still on the 4090 with at least one full sequence."""
    text = (EXAMPLES / "hybrid-box-scenario.yaml").read_text()
    for name, model in (("images", "sdxl"), ("refiner", "sdxl-refiner")):
        text = text.replace(f"  - name: {name}\n    model: {model}\n", f"  - name: {name}\n    model: {model}\n    memory: default\n")
    assert text.count("    memory: default\n") == 2
    plan = _plan(text)
    assert not plan.feasible
    assert all(s.memory_setting in ("default", None) for s in plan.services)
    unplaced = [s.name for s in plan.services if not s.devices]
    assert len(unplaced) == 1 and unplaced[0] != "chat"
    chat = plan.service("chat")
    assert plan.device(chat.devices[0]).name == "RTX 4090"
    assert chat.kv_cache_tokens is not None and chat.kv_cache_tokens >= 8192
    assert "GPX014" in _codes(plan) and "GPX022" not in _codes(plan)
    assert unplaced[0] in plan.reasons[0]
    _assert_fits(plan)


def test_image_services_prefer_the_default_setting_where_it_fits():
    """Both settings fit one 4090 for one SDXL: the plan keeps the default (faster) one; `memory: low` forces the
    other and the launch-side flags follow (tests/launch)."""
    auto = _plan("devices:\n  - gpu: RTX 4090\nservices:\n  - {name: img, model: sdxl}\n")
    assert auto.service("img").memory_setting == "default" and "GPX022" not in _codes(auto)
    low = _plan("devices:\n  - gpu: RTX 4090\nservices:\n  - {name: img, model: sdxl, memory: low}\n")
    assert low.service("img").memory_setting == "low"
    assert low.service("img").memory_bytes[0] < auto.service("img").memory_bytes[0] - 2.5 * GB
    assert "as its `memory: low` asks" in [w for w in low.warnings if w.service == "img"][0].message


@pytest.mark.parametrize(
    ("service", "message"),
    [
        ("{name: chat, model: llama-3.1-8b, memory: low}", "memory: low is an image-service setting"),
        ("{name: img, model: flux.1-schnell, memory: low}", "has no low-memory setting"),
        ("{name: img, model: sdxl, memory: tiny}", "memory"),
    ],
)
def test_memory_key_is_checked_with_file_line_and_field(service, message):
    with pytest.raises(GpumixError, match=message) as err:
        _plan(f"devices:\n  - gpu: RTX 4090\nservices:\n  - {service}\n")
    assert "t.yaml" in err.value.message and "memory" in err.value.message


def test_the_issue_workload_that_was_refused_now_plans():
    """Issue 9: "Even context 8192, concurrency 8 with SDXL, Whisper, BGE-M3 and the reranker is refused"."""
    plan = _plan(
        "devices:\n  - gpu: RTX 4090\n  - gpu: RTX 5060 Ti 16GB\nservices:\n"
        "  - {name: chat, model: llama-3.1-8b, quant: fp8, engine: vllm, context: 8192, concurrency: 8}\n"
        "  - {name: images, model: sdxl}\n  - {name: transcribe, model: whisper-large-v3}\n"
        "  - {name: embeddings, model: bge-m3}\n  - {name: rerank, model: bge-reranker-v2-m3}\n"
    )  # fmt: skip
    assert plan.feasible
    chat = plan.service("chat")
    assert chat.kv_cache_tokens is not None and 8192 <= chat.kv_cache_tokens <= 8 * 8192
    _assert_fits(plan)


# ---------------------------------------------------------------- replicas share the streams


def test_4090_and_3060_replicas_share_16_streams_by_what_each_holds():
    plan = plan_file(EXAMPLES / "4090-3060-8b-throughput.yaml")
    chat = plan.service("chat")
    assert plan.feasible and chat.mode == "replica" and chat.devices == ["gpu0", "gpu1"]
    assert sum(chat.replica_concurrency) == 16 and chat.replica_concurrency[0] > chat.replica_concurrency[1] >= 1
    assert chat.replica_shares == [round(n / 16, 4) for n in chat.replica_concurrency]
    # Each replica's KV is sized for its own share, not the whole concurrency.
    for n, tokens in zip(chat.replica_concurrency, chat.replica_kv_cache_tokens, strict=True):
        assert 8192 <= tokens <= n * 8192
    assert chat.kv_cache_tokens == sum(chat.replica_kv_cache_tokens)
    # Aggregate = the sum of each replica's one-card estimate at its share and KV; none beats its bandwidth.
    model, quant = load_model("llama-3-8b"), resolve_quant("q8_0")
    total = 0.0
    for gpu, n, tokens in zip(("RTX 4090", "RTX 3060 12GB"), chat.replica_concurrency, chat.replica_kv_cache_tokens,
                              strict=True):  # fmt: skip
        device = device_from_spec(resolve_gpu(gpu), 0)
        one = estimate(model, quant, Placement(mode="single", devices=(device,)),
                       Workload(context=8192, parallel=n, kv_tokens=tokens))  # fmt: skip
        held = min(n, tokens // 8192)
        assert one.aggregate_tokens_per_s <= _bandwidth_bound("llama-3-8b", "q8_0", gpu, held, 8192)
        total += one.aggregate_tokens_per_s
    assert chat.predicted.aggregate_tokens_per_s == pytest.approx(total, rel=1e-3)
    # Better than the 4090 alone, which holds only 14 of the 16 streams at full length.
    alone = _plan("devices:\n  - gpu: RTX 4090\nservices:\n  - {name: chat, model: llama-3-8b, quant: q8_0, "
                  "context: 8192, concurrency: 16, objective: throughput}\n").service("chat")  # fmt: skip
    assert alone.max_full_context_sequences == 14 and alone.predicted.concurrency == 14
    ratio = chat.predicted.aggregate_tokens_per_s / alone.predicted.aggregate_tokens_per_s
    assert 1.05 < ratio < 1.15  # the 3060 adds its two streams' tokens/s; batching more on the 4090 was free
    _assert_fits(plan)


def test_a_4090_that_holds_every_stream_stays_alone():
    """At 4096 tokens the 4090 holds all 16 streams: a step reads the weights once for all of them, so moving
    streams to a 3060 replica would lose tokens/s. The replica candidate is weighed and loses."""
    text = ("devices:\n  - gpu: RTX 4090\n  - gpu: RTX 3060 12GB\nservices:\n  - {name: chat, model: llama-3-8b, "
            "quant: q8_0, context: 4096, concurrency: 16, objective: throughput}\n")  # fmt: skip
    spec, lines = parse_plan_text_with_lines(text, "t.yaml")
    result = planning(spec, lines=lines, source="t.yaml")
    chat = result.plan.service("chat")
    assert chat.mode == "single" and chat.max_full_context_sequences == 16
    replicas = [o for o in result.options[0] if o.mode == "replica" and o.fits()]
    assert replicas and all(o.aggregate < chat.predicted.aggregate_tokens_per_s for o in replicas)


def test_matched_replicas_split_the_streams_evenly():
    plan = plan_file(EXAMPLES / "2x4090-8b-replicas.yaml")
    chat = plan.service("chat")
    assert chat.replica_concurrency == [4, 4] and chat.replica_shares == [0.5, 0.5]
    assert chat.replica_kv_cache_tokens == [4 * 8192, 4 * 8192]


# ---------------------------------------------------------------- KV levels and the assignment


def test_a_side_service_goes_where_it_leaves_the_llm_its_kv():
    """Two ways to place an embedding model: beside the LLM (taking its KV) or on the other card. The plan leaves the
    LLM's pool whole."""
    plan = _plan(
        "devices:\n  - gpu: RTX 4090\n  - gpu: RTX 3060 12GB\nservices:\n"
        "  - {name: chat, model: llama-3.1-8b, quant: q8_0, context: 8192, concurrency: 12, devices: [0]}\n"
        "  - {name: embed, model: bge-m3}\n"
    )  # fmt: skip
    assert plan.service("embed").devices == ["gpu1"]
    assert plan.service("chat").max_full_context_sequences == 12 and "GPX017" not in _codes(plan)


def test_two_llms_on_one_card_share_its_leftover():
    plan = _plan(
        "devices:\n  - gpu: RTX 4090\nservices:\n"
        "  - {name: a, model: llama-3.1-8b, quant: q8_0, context: 8192, concurrency: 16}\n"
        "  - {name: b, model: llama-3.1-8b, quant: q8_0, context: 8192, concurrency: 16}\n"
    )  # fmt: skip
    a, b = plan.service("a"), plan.service("b")
    assert plan.feasible and a.devices == b.devices == ["gpu0"]
    assert a.kv_cache_tokens is not None and b.kv_cache_tokens is not None
    assert abs(a.kv_cache_tokens - b.kv_cache_tokens) <= 256  # they rise together
    assert min(a.kv_cache_tokens, b.kv_cache_tokens) >= 8192
    gpu0 = plan.device("gpu0")
    assert gpu0.memory_free_bytes - GiB - gpu0.memory_planned_bytes < 2 * 256 * 128 * 1024 + 64 * 2**20
    assert {"GPX017"} <= _codes(plan)


def test_kv_unified_false_reserves_every_slot_and_is_refused_for_vllm():
    fixed = _plan("devices:\n  - gpu: RTX 4090\nservices:\n  - {name: c, model: llama-3.1-8b, quant: q4_k_m, "
                  "context: 8192, concurrency: 4, kv_unified: false}\n").service("c")  # fmt: skip
    assert fixed.kv_unified is False and fixed.kv_cache_tokens == 4 * 8192
    too_big = _plan("devices:\n  - gpu: RTX 3060 12GB\nservices:\n  - {name: c, model: llama-3.1-8b, quant: q8_0, "
                    "context: 8192, concurrency: 8, kv_unified: false}\n")  # fmt: skip
    assert not too_big.feasible  # 8 × 1 GiB of KV + 8.5 GB of weights: only a shared pool would fit
    pooled = _plan("devices:\n  - gpu: RTX 3060 12GB\nservices:\n  - {name: c, model: llama-3.1-8b, quant: q8_0, "
                   "context: 8192, concurrency: 8}\n").service("c")  # fmt: skip
    assert pooled.kv_unified is True and pooled.kv_cache_tokens is not None and pooled.kv_cache_tokens < 8 * 8192
    with pytest.raises(GpumixError, match=r"t.yaml:5: .*kv_unified.*llama.cpp setting"):
        _plan("devices:\n  - gpu: RTX 4090\nservices:\n  - name: c\n    kv_unified: false\n"
              "    model: llama-3.1-8b\n    quant: fp8\n")  # fmt: skip


def test_predictions_use_the_streams_the_kv_holds():
    plan = _plan("devices:\n  - gpu: RTX 3060 12GB\nservices:\n  - {name: c, model: llama-3.1-8b, quant: q8_0, "
                 "context: 8192, concurrency: 8, objective: throughput}\n")  # fmt: skip
    chat = plan.service("c")
    held = chat.max_full_context_sequences
    assert held is not None and 1 <= held < 8 and chat.predicted.concurrency == held
    model, quant = load_model("llama-3.1-8b"), resolve_quant("q8_0")
    device = device_from_spec(resolve_gpu("RTX 3060 12GB"), 0)
    at_held = estimate(model, quant, Placement(mode="single", devices=(device,)), Workload(context=8192, parallel=held))
    assert chat.predicted.aggregate_tokens_per_s == pytest.approx(at_held.aggregate_tokens_per_s, rel=1e-3)
    assert f"holds {held} sequence" in _gpx017(plan, "c") and "llama-server fails the running requests" in _gpx017(
        plan, "c"
    )


def test_a_split_gets_kv_consistent_with_its_layers():
    """A llama.cpp layer split holds one pool: the same tokens on each card, bytes in proportion to its layers."""
    plan = _plan("devices:\n  - gpu: RTX 4090\n  - gpu: RTX 3090\nservices:\n  - {name: c, model: llama-3.3-70b, "
                 "quant: q4_k_m, context: 8192, concurrency: 8}\n")  # fmt: skip
    chat = plan.service("c")
    assert chat.mode == "layer_split" and chat.kv_cache_tokens is not None
    per_layer_token = 8 * 128 * 2 * 2  # Llama 3.3 70B: 8 KV heads × 128 × K and V × f16
    cells = -(-chat.kv_cache_tokens // 256) * 256
    for layers, breakdown in zip(chat.layers, chat.memory_breakdown, strict=True):
        assert breakdown.kv_cache_bytes == layers * cells * per_layer_token
    _assert_fits(plan)


def test_the_llm_a_box_is_built_for_stays_when_a_side_service_must_go():
    plan = _plan(
        "devices:\n  - gpu: RTX 4090\nservices:\n"
        "  - {name: chat, model: llama-3.1-8b, quant: fp8, engine: vllm, context: 8192, concurrency: 4}\n"
        "  - {name: images, model: sdxl}\n  - {name: refiner, model: sdxl-refiner}\n"
    )  # fmt: skip
    assert not plan.feasible and plan.service("chat").devices == ["gpu0"]
    assert len([s for s in plan.services if not s.devices]) == 1


# ---------------------------------------------------------------- launch realises the budget


def test_launch_gives_each_process_its_kv_pool():
    plan = plan_file(EXAMPLES / "4090-3060-8b-throughput.yaml")
    chat = plan.service("chat")
    specs = [s for s in render_plan(plan) if s.service == "chat"]
    assert len(specs) == 2
    for spec, n, tokens in zip(specs, chat.replica_concurrency, chat.replica_kv_cache_tokens, strict=True):
        argv = spec.argv
        assert argv[argv.index("-c") + 1] == str(tokens) and argv[argv.index("-np") + 1] == str(n)
        if n > 1:
            assert "--kv-unified" in argv and argv[argv.index("--kv-unified-per-slot") + 1] == "8192"
    vllm = plan_file(EXAMPLES / "hybrid-box.yaml")
    chat = vllm.service("chat")
    (spec,) = [s for s in render_plan(vllm) if s.service == "chat"]
    argv = spec.argv
    # The budget (whole 16-token blocks) plus vLLM's null block, at 128 KiB per token (Llama 3.1 8B, f16 KV).
    assert chat.kv_cache_tokens % kvmath.VLLM_BLOCK_TOKENS == 0
    assert argv[argv.index("--kv-cache-memory-bytes") + 1] == str((chat.kv_cache_tokens + 16) * 128 * 1024)
    assert argv[argv.index("--max-model-len") + 1] == "8192" and argv[argv.index("--max-num-seqs") + 1] == "16"


def test_launch_of_a_non_unified_service_keeps_a_cache_per_slot():
    plan = _plan("devices:\n  - gpu: RTX 4090\nservices:\n  - {name: c, model: llama-3.1-8b, quant: q4_k_m, "
                 "context: 4096, concurrency: 4, kv_unified: false}\n")  # fmt: skip
    (spec,) = render_plan(plan)
    argv = spec.argv
    assert argv[argv.index("-c") + 1] == str(4 * 4096) and argv[argv.index("-np") + 1] == "4"
    assert "--no-kv-unified" in argv and "--kv-unified" not in argv


def test_vllm_pipeline_stages_get_the_kv_bytes_of_the_heaviest_stage():
    """vLLM gives every worker --kv-cache-memory-bytes and then cuts all to the fewest blocks: the stage with the
    most layers must get its planned bytes, so the others shrink to the same tokens."""
    plan = _plan("devices:\n  - gpu: RTX 4090\n  - gpu: RTX 3090\nservices:\n  - {name: c, model: qwen2.5-32b, "
                 "quant: fp8, context: 8192, concurrency: 4, mode: pipeline_parallel}\n")  # fmt: skip
    chat = plan.service("c")
    assert chat.mode == "pipeline_parallel"
    (spec,) = render_plan(plan)
    kv = [b.kv_cache_bytes for b in chat.memory_breakdown]
    tokens = chat.kv_cache_tokens
    assert tokens is not None and tokens % kvmath.VLLM_BLOCK_TOKENS == 0
    # The heaviest stage's bytes for the budget plus vLLM's null block (one more 16-token block).
    asked = int(spec.argv[spec.argv.index("--kv-cache-memory-bytes") + 1])
    assert asked == -(-max(kv) * (tokens + 16) // tokens) and asked - max(kv) == max(kv) // tokens * 16
    heaviest = chat.layers.index(max(chat.layers))
    assert kv[heaviest] == max(kv)


# ---------------------------------------------------------------- the arithmetic


def test_share_leftover_rises_together_and_stops_at_full_devices():
    growers = [
        kvmath.Grower(1000, 11000, {"a": 1.0}),  # wants 10,000 tokens on a
        kvmath.Grower(1000, 11000, {"a": 1.0, "b": 2.0}),  # a split over a and b
        kvmath.Grower(0, 4000, {"b": 1.0}),
    ]
    extra = kvmath.share_leftover(growers, {"a": 10_000.0, "b": 6_000.0})
    used_a = extra[0] + extra[1]
    used_b = 2 * extra[1] + extra[2]
    assert used_a <= 10_000 + 1e-6 and used_b <= 6_000 + 1e-6
    # The level rises over all three: b fills first (2 × (11000 L − 1000) + 4000 L = 6000 at L = 8/26); grower 0
    # keeps rising on a alone until a is full.
    level = 8 / 26
    assert extra[1] == pytest.approx(11000 * level - 1000) and extra[2] == pytest.approx(4000 * level)
    assert extra[0] == pytest.approx(10_000 - extra[1])
    # A pool the solver gave more keeps it while the level catches up with it.
    ahead = kvmath.share_leftover([kvmath.Grower(4000, 16000, {"a": 1.0}), kvmath.Grower(2000, 16000, {"a": 1.0})],
                                  {"a": 4000.0})  # fmt: skip
    assert ahead[0] + 4000 == pytest.approx(ahead[1] + 2000) == pytest.approx(5000)


def test_replica_streams_follow_marginal_tokens_and_capacity():
    assert kvmath.replica_streams(8, [0.01, 0.01], [0.02, 0.02], [8, 8]) == [4, 4]
    # A fast card whose step barely grows with streams takes them all but the slow card's one...
    assert kvmath.replica_streams(16, [0.01, 0.03], [0.011, 0.031], [16, 16]) == [15, 1]
    # ...unless its KV holds fewer.
    assert kvmath.replica_streams(16, [0.01, 0.03], [0.011, 0.031], [12, 16]) == [12, 4]


def test_budget_rounding():
    vllm = Workload(engine="vllm", context=8190, parallel=4)
    assert kvmath.min_kv_tokens(vllm) == 8192 and kvmath.kv_step(vllm) == 16
    llama = Workload(context=3000, parallel=4)
    assert kvmath.min_kv_tokens(llama) == 3072 and kvmath.max_kv_tokens(llama, 4) == 12000
    assert kvmath.round_budget(5000.7, 3072, 12000, 256) == 4864
    assert kvmath.round_budget(13000, 3072, 12000, 256) == 12000
