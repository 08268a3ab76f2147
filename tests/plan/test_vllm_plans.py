"""Plans for vLLM services: on a CPU device (vLLM's CPU build), TP/PP over CPU devices, and the new GPU examples."""

from __future__ import annotations

from pathlib import Path

from gpumix.estimate.memory import kv_cache_bytes_per_token
from gpumix.models.catalog import load_model
from gpumix.plan.planner import plan_file

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_cpu_vllm_example_puts_chat_on_vllm_on_the_cpu():
    plan = plan_file(EXAMPLES / "cpu-vllm.yaml")
    assert plan.feasible, plan.reasons
    chat, embed = plan.service("chat"), plan.service("embed")
    assert (chat.engine, chat.mode, chat.devices, chat.threads) == ("vllm", "single", ["cpu0"], 1)
    assert embed.engine == "llama.cpp"
    # KV for context x concurrency at SmolLM2's 23,040 bytes per token (30 layers x 3 KV heads x 64 x K,V x 2 B).
    assert kv_cache_bytes_per_token(load_model("smollm2-135m")) == 23040
    assert chat.memory_breakdown[0].kv_cache_bytes == 2048 * 2 * 23040


def test_tp_and_pp_over_cpu_devices():
    plan = plan_file(EXAMPLES / "cpu-vllm-parallel.yaml")
    assert plan.feasible, plan.reasons
    tp, pp = plan.service("chat-tp"), plan.service("chat-pp")
    assert (tp.mode, tp.devices, tp.threads) == ("tensor_parallel", ["cpu0", "cpu1"], 1)
    assert (pp.mode, pp.devices, pp.threads) == ("pipeline_parallel", ["cpu0", "cpu1"], 1)
    assert sum(pp.layers) == 30 and all(pp.layers)
    # Gemma 3 270M has one KV head: with TP=2 vLLM replicates it, so each rank holds the whole KV, not half.
    single = plan_file_text(EXAMPLES / "cpu-vllm-parallel.yaml", "mode: tensor_parallel", "mode: single")
    one_rank = single.service("chat-tp").memory_breakdown[0].kv_cache_bytes
    assert [b.kv_cache_bytes for b in tp.memory_breakdown] == [one_rank, one_rank]


def plan_file_text(path: Path, old: str, new: str):
    import tempfile

    with tempfile.TemporaryDirectory() as tmp_dir:
        copy = Path(tmp_dir) / path.name
        copy.write_text(path.read_text().replace(old, new, 1))
        return plan_file(copy)


def test_the_gpu_vllm_examples():
    awq = plan_file(EXAMPLES / "2x4090-70b-awq.yaml")
    assert awq.feasible and awq.service("chat").mode == "tensor_parallel" and awq.service("chat").quant == "awq-int4"
    replicas = plan_file(EXAMPLES / "2x4090-8b-vllm-replicas.yaml")
    chat = replicas.service("chat")
    assert replicas.feasible and (chat.engine, chat.mode, chat.devices) == ("vllm", "replica", ["gpu0", "gpu1"])


def test_replicas_with_uneven_streams_plan_and_launch_each_pool(tmp_path):
    """3 streams over 2 vLLM replicas: one replica serves 1 stream, so its pool cannot grow past one full context
    (it once divided by that zero span); each process gets its own streams and KV bytes."""
    from gpumix.launch.commands import render_plan

    path = tmp_path / "rep3.yaml"
    path.write_text("devices:\n  - gpu: RTX 4090\n  - gpu: RTX 4090\nservices:\n  - {name: chat, model: llama-3.1-8b, "
                    "quant: fp8, engine: vllm, context: 8192, concurrency: 3, replicas: 2, mode: replica}\n")  # fmt: skip
    plan = plan_file(path)
    chat = plan.service("chat")
    assert plan.feasible and chat.mode == "replica"
    assert sorted(chat.replica_concurrency) == [1, 2] and chat.max_full_context_sequences == 3
    per_token = kv_cache_bytes_per_token(load_model("llama-3.1-8b"))
    for spec, seqs, tokens in zip(render_plan(plan), chat.replica_concurrency, chat.replica_kv_cache_tokens, strict=True):
        argv = spec.argv
        assert argv[argv.index("--max-num-seqs") + 1] == str(seqs) and tokens == seqs * 8192
        assert argv[argv.index("--kv-cache-memory-bytes") + 1] == str(int((tokens + 16) * per_token))  # + the null block
