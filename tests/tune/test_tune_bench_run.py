"""How llama-bench and llama-batched-bench runs fail, with stand-in binaries (shell scripts) in their place."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpumix.errors import GpumixError
from gpumix.tune.bench import BenchError, BenchRequest, run_batched_bench, run_llama_bench

REQ = BenchRequest("m.gguf", n_gen=8)


def _tool(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


def test_a_missing_binary_is_a_one_line_error(tmp_path):
    with pytest.raises(GpumixError, match="llama-batched-bench not found at") as err:
        run_batched_bench(REQ, 2, binary=tmp_path / "llama-batched-bench")
    assert not isinstance(err.value, BenchError) and "engines install" in (err.value.hint or "")


def test_a_crash_is_classified_and_keeps_the_command(tmp_path):
    tool = _tool(tmp_path, "llama-bench", "echo 'ggml_backend_cuda_buffer_type_alloc_buffer: out of memory' >&2; exit 1")
    with pytest.raises(BenchError) as err:
        run_llama_bench(REQ, binary=tool)
    assert err.value.kind == "oom" and err.value.message.startswith("llama-bench failed (out of memory")
    assert err.value.command[0] == str(tool) and "-n" in err.value.command
    assert err.value.hint == "command: " + " ".join(err.value.command)


def test_a_timeout_keeps_what_was_printed(tmp_path):
    row = {"n_prompt": 0, "n_gen": 8, "avg_ts": 12.5, "stddev_ts": 0.1, "samples_ts": [12.5], "devices": "CPU"}
    tool = _tool(tmp_path, "llama-bench", f"echo '[{json.dumps(row)},'; exec sleep 30")
    with pytest.raises(BenchError) as err:
        run_llama_bench(REQ, binary=tool, timeout_s=2)
    assert err.value.kind == "timeout" and "ran past 2 s" in err.value.message
    assert [r.tokens_per_s for r in err.value.partial] == [12.5]


def test_batched_bench_reads_the_last_speed_row(tmp_path):
    rows = [{"pp": 1, "tg": 8, "pl": 2, "speed_tg": v} for v in (10.0, 20.5)]
    tool = _tool(tmp_path, "llama-batched-bench", "".join(f"echo '{json.dumps(r)}'\n" for r in rows))
    result = run_batched_bench(REQ, 2, binary=tool)
    assert result.tokens_per_s == 20.5 and result.command[0] == str(tool)
    empty = _tool(tmp_path, "empty-bench", "exit 0")
    with pytest.raises(BenchError, match=r"empty-bench failed \(no error message; exit 0\)") as err:
        run_batched_bench(REQ, 2, binary=empty)
    assert err.value.command[0] == str(empty)
