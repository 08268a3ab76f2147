"""llama-bench argv and JSON parsing, failure classification (real output shapes, no binary)."""

from __future__ import annotations

import json

import pytest

from gpumix.errors import GpumixError
from gpumix.tune.bench import (
    BenchRequest,
    batched_bench_argv,
    bench_argv,
    check_rpc_reachable,
    classify_failure,
    parse_bench_json,
    parse_device_list,
)

# One object as llama-bench 0c1e570 printed it on the test bed (fields trimmed to those gpumix reads + a few).
ROW = {
    "build_commit": "0c1e570", "model_size": 246587904, "model_n_params": 268098176, "n_gpu_layers": 99,
    "devices": "RPC0/RPC1", "tensor_split": "9.00/1.00", "n_prompt": 0, "n_gen": 32, "avg_ns": 1021522616,
    "stddev_ns": 0, "avg_ts": 31.325787, "stddev_ts": 0.5, "samples_ns": [1021522616], "samples_ts": [31.3258],
}  # fmt: skip


def test_argv_uses_slash_lists_and_no_shell() -> None:
    req = BenchRequest("m.gguf", rpc=("127.0.0.1:1", "127.0.0.1:2"), devices=("RPC0", "RPC1"),
                       tensor_split=(9.0, 1.0), n_gen=16, repetitions=1)  # fmt: skip
    argv = bench_argv("/bin/llama-bench", req)
    assert argv[argv.index("-dev") + 1] == "RPC0/RPC1"
    assert argv[argv.index("-ts") + 1] == "9/1"
    assert argv[argv.index("--rpc") + 1] == "127.0.0.1:1,127.0.0.1:2"
    assert argv[argv.index("-o") + 1] == "json" and argv[argv.index("-n") + 1] == "16"
    batched = batched_bench_argv("/bin/llama-batched-bench", req, parallel=4, context=1024)
    assert batched[batched.index("-dev") + 1] == "RPC0,RPC1"  # common args: comma lists
    assert batched[batched.index("-ts") + 1] == "9,1" and batched[batched.index("-npl") + 1] == "4"


def test_parse_complete_and_truncated_output() -> None:
    pp = ROW | {"n_prompt": 64, "n_gen": 0, "avg_ts": 120.0}
    text = "some log line\n" + json.dumps([pp, ROW], indent=2)
    results = parse_bench_json(text)
    assert [r.test for r in results] == ["pp64", "tg32"]
    tg = results[1]
    assert tg.tokens_per_s == pytest.approx(31.325787) and tg.stddev_tokens_per_s == 0.5
    assert tg.devices == "RPC0/RPC1" and tg.model_size_bytes == 246587904 and tg.model_n_params == 268098176
    # a crash after the first test: the array is never closed
    cut = "[\n" + json.dumps(pp, indent=2) + ",\n" + json.dumps(ROW)[:40]
    assert [r.test for r in parse_bench_json(cut)] == ["pp64"]
    assert parse_bench_json("") == [] and parse_bench_json("garbage [ {") == []


@pytest.mark.parametrize(
    ("stderr", "kind"),
    [
        ("ggml-rpc.cpp:547: Failed to connect to 127.0.0.1:50999\n#0 0x0 in wait4", "rpc_refused"),
        ("ggml_backend_cuda_buffer_type_alloc_buffer: allocating 9000 MiB on device 0: cudaMalloc failed: out of memory",
         "oom"),
        ("ggml-rpc.cpp:612: RPC command failed: recv failed (connection reset)", "rpc_lost"),
        ("error: unknown argument: -foo", "crashed"),
    ],
)
def test_failures_are_classified(stderr: str, kind: str) -> None:
    assert classify_failure(stderr)[0] == kind


def test_device_list_parsing() -> None:
    text = "Available devices:\n  RPC0: 127.0.0.1:50152 (24105 MiB, 24000 MiB free)\n  CUDA0: NVIDIA GeForce RTX 4090 (24080 MiB, 23500 MiB free)\n"
    devs = parse_device_list(text)
    assert [(d.name, d.description) for d in devs] == [("RPC0", "127.0.0.1:50152"), ("CUDA0", "NVIDIA GeForce RTX 4090")]
    assert devs[0].free_bytes == 24000 * 2**20


def test_unreachable_or_malformed_rpc_is_a_clear_error() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connection refused
        with pytest.raises(GpumixError, match=f"RPC server 127.0.0.1:{port} is not reachable"):
            check_rpc_reachable([f"127.0.0.1:{port}"], timeout_s=1)
    with pytest.raises(GpumixError, match="not host:port"):
        check_rpc_reachable(["localhost"])
