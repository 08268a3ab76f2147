"""Run llama-bench (JSON output, argv list, no shell) and read its results into typed values.

Flags per engines.md §1.4: `-dev` and `-ts` take '/'-separated lists; `--rpc` a comma-separated host:port list;
`-o json` prints one object per test with `avg_ts` (mean over `-r` runs of (n_prompt+n_gen)/s) and `stddev_ts`.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from gpumix.errors import GpumixError

T = TypeVar("T")


@dataclass(frozen=True)
class BenchRequest:
    model_path: str
    rpc: tuple[str, ...] = ()  # host:port of ggml-rpc-server devices
    devices: tuple[str, ...] = ()  # -dev, e.g. ("RPC0", "RPC1"); empty = llama.cpp's default
    n_gpu_layers: int = 99
    tensor_split: tuple[float, ...] = ()
    n_prompt: int = 0
    n_gen: int = 32
    repetitions: int = 1
    threads: int | None = None
    flash_attn: int | None = None
    extra: tuple[str, ...] = ()


@dataclass(frozen=True)
class BenchResult:
    tokens_per_s: float  # avg_ts
    stddev_tokens_per_s: float
    n_prompt: int
    n_gen: int
    samples_tokens_per_s: tuple[float, ...]
    devices: str
    tensor_split: str
    n_gpu_layers: int
    model_size_bytes: int
    command: tuple[str, ...] = ()
    model_n_params: int = 0
    prefill_tokens_per_s: float | None = None  # the pp row of the same llama-bench run, when it had one

    def with_prefill(self, tokens_per_s: float) -> BenchResult:
        return replace(self, prefill_tokens_per_s=tokens_per_s)

    @property
    def test(self) -> str:
        if self.n_prompt and self.n_gen:
            return f"pp{self.n_prompt}+tg{self.n_gen}"
        return f"pp{self.n_prompt}" if self.n_prompt else f"tg{self.n_gen}"


class BenchError(GpumixError):
    """llama-bench failed; `kind` says how (oom | rpc_refused | rpc_lost | crashed | timeout), `partial` keeps
    the results it printed before failing and `command` is the argv that ran (empty when none did)."""

    def __init__(
        self, message: str, hint: str | None = None, kind: str = "crashed", partial: Sequence[BenchResult] = (),
        command: Sequence[str] = (),
    ) -> None:  # fmt: skip
        super().__init__(message, hint)
        self.kind = kind
        self.partial = tuple(partial)
        self.command = tuple(command)


def _fmt(value: float) -> str:
    return f"{value:g}"


def _device_args(req: BenchRequest, sep: str) -> list[str]:
    """--rpc, -dev, -ts and -t; `sep` joins devices and shares (llama-bench: '/', the common args: ',')."""
    argv: list[str] = []
    if req.rpc:
        argv += ["--rpc", ",".join(req.rpc)]
    if req.devices:
        argv += ["-dev", sep.join(req.devices)]
    if req.tensor_split:
        argv += ["-ts", sep.join(_fmt(v) for v in req.tensor_split)]
    if req.threads is not None:
        argv += ["-t", str(req.threads)]
    return argv


def bench_argv(binary: str | Path, req: BenchRequest) -> list[str]:
    argv = [str(binary), "-m", req.model_path, "-o", "json", "-r", str(req.repetitions)]
    argv += ["-p", str(req.n_prompt), "-n", str(req.n_gen), "-ngl", str(req.n_gpu_layers)]
    argv += _device_args(req, "/")  # llama-bench separates list values with '/' (a ',' would sweep)
    if req.flash_attn is not None:
        argv += ["-fa", str(req.flash_attn)]
    return argv + list(req.extra)


def parse_bench_json(text: str, command: Sequence[str] = ()) -> list[BenchResult]:
    """Parse `llama-bench -o json` output. A run cut short (crash mid-way) still yields its complete objects."""
    start = text.find("[")
    if start < 0:
        return []
    body = text[start:]
    try:
        rows = json.loads(body)
    except json.JSONDecodeError:
        end = body.rfind("}")
        try:
            rows = json.loads(body[: end + 1] + "]") if end > 0 else []
        except json.JSONDecodeError:
            return []
    return [_result(row, command) for row in rows if isinstance(row, dict) and "avg_ts" in row]


def _result(row: dict, command: Sequence[str]) -> BenchResult:
    return BenchResult(
        tokens_per_s=float(row["avg_ts"]),
        stddev_tokens_per_s=float(row.get("stddev_ts", 0.0)),
        n_prompt=int(row.get("n_prompt", 0)),
        n_gen=int(row.get("n_gen", 0)),
        samples_tokens_per_s=tuple(float(s) for s in row.get("samples_ts", ())),
        devices=str(row.get("devices", "")),
        tensor_split=str(row.get("tensor_split", "")),
        n_gpu_layers=int(row.get("n_gpu_layers", 0)),
        model_size_bytes=int(row.get("model_size", 0)),
        command=tuple(command),
        model_n_params=int(row.get("model_n_params", 0)),
    )


def check_rpc_reachable(addresses: Sequence[str], timeout_s: float = 2.0) -> None:
    """llama.cpp aborts with a backtrace on an unreachable RPC server; say which one instead."""
    for address in addresses:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise GpumixError(f"RPC address '{address}' is not host:port", hint="e.g. --rpc 127.0.0.1:50052")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
                pass
        except OSError as exc:
            raise GpumixError(
                f"RPC server {address} is not reachable ({exc.strerror or exc})",
                hint="start it (`gpumix testbed up`, or `ggml-rpc-server -H HOST -p PORT` on that host)",
            ) from exc


_OOM = re.compile(r"out of memory|failed to allocate|cudaMalloc failed|unable to allocate|alloc.*failed", re.I)
_REFUSED = re.compile(r"Failed to connect to (\S+)", re.I)
_LOST = re.compile(r"rpc.*(fail|error|lost)|connection reset|broken pipe|recv failed|send failed", re.I)


def classify_failure(stderr: str) -> tuple[str, str]:
    """(kind, one-line reason) from llama-bench's stderr."""
    if m := _REFUSED.search(stderr):
        return "rpc_refused", f"cannot connect to RPC server {m.group(1)}"
    if _OOM.search(stderr):
        line = next((ln for ln in stderr.splitlines() if _OOM.search(ln)), "out of memory")
        return "oom", f"out of memory: {line.strip()[:200]}"
    if _LOST.search(stderr):
        line = next((ln for ln in stderr.splitlines() if _LOST.search(ln)), "")
        return "rpc_lost", f"RPC connection lost: {line.strip()[:200]}"
    lines = [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith(("#", "[", "Using host"))]
    return "crashed", (lines[-1].strip()[:200] if lines else "no error message")


def _tool_binary(tool: str, binary: str | Path | None) -> str | Path:
    """The given binary, else the one in gpumix's llama.cpp build."""
    if binary is not None:
        return binary
    from gpumix.launch.llamacpp import require_llama_cpp

    return require_llama_cpp().binary(tool)


def _run_tool(argv: list[str], timeout_s: float, parse: Callable[[str], list[T]]) -> list[T]:
    """Run a llama.cpp bench tool and parse its stdout. A missing binary, a timeout, a non-zero exit or no
    result become errors naming the tool, each keeping what was parsed before it failed."""
    tool = Path(argv[0]).name
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    except FileNotFoundError as exc:
        raise GpumixError(f"{tool} not found at {argv[0]}", hint="run `gpumix engines install llama.cpp`") from exc
    except subprocess.TimeoutExpired as exc:
        # On POSIX the partial output is bytes even with text=True (subprocess's communicate before decoding)
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
        raise BenchError(f"{tool} ran past {timeout_s:.0f} s", hint="lower -n/-r", kind="timeout",
                         partial=_results_only(parse(out)), command=argv) from exc  # fmt: skip
    results = parse(proc.stdout)
    if proc.returncode != 0 or not results:
        kind, reason = classify_failure(proc.stderr)
        raise BenchError(f"{tool} failed ({reason}; exit {proc.returncode})", hint="command: " + " ".join(argv),
                         kind=kind, partial=_results_only(results), command=argv)  # fmt: skip
    return results


def _results_only(parsed: Sequence[object]) -> list[BenchResult]:
    return [r for r in parsed if isinstance(r, BenchResult)]


def run_llama_bench(req: BenchRequest, binary: str | Path | None = None, timeout_s: float = 600) -> list[BenchResult]:
    if req.rpc:
        check_rpc_reachable(req.rpc)
    argv = bench_argv(_tool_binary("llama-bench", binary), req)
    return _run_tool(argv, timeout_s, lambda out: parse_bench_json(out, argv))


@dataclass(frozen=True)
class ListedDevice:
    name: str  # RPC0, CUDA0, ...
    description: str  # 127.0.0.1:50052, NVIDIA GeForce RTX 4090 ...
    total_bytes: int
    free_bytes: int


_LISTED = re.compile(r"^\s*(\S+):\s*(.*?)\s*\((\d+) MiB,\s*(\d+) MiB free\)")


def list_devices(rpc: Sequence[str] = (), binary: str | Path | None = None) -> list[ListedDevice]:
    """`llama-bench [--rpc ...] --list-devices` (the --rpc must come first or its devices are not listed)."""
    if binary is None:
        from gpumix.launch.llamacpp import require_llama_cpp

        binary = require_llama_cpp().binary("llama-bench")
    if rpc:
        check_rpc_reachable(rpc)
    argv = [str(binary)] + (["--rpc", ",".join(rpc)] if rpc else []) + ["--list-devices"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        _kind, reason = classify_failure(proc.stderr)
        raise GpumixError(f"llama-bench --list-devices failed: {reason}", hint=" ".join(argv))
    return parse_device_list(proc.stdout + proc.stderr)


def parse_device_list(text: str) -> list[ListedDevice]:
    found = []
    for line in text.splitlines():
        if m := _LISTED.match(line):
            mib = 2**20
            found.append(ListedDevice(m.group(1), m.group(2), int(m.group(3)) * mib, int(m.group(4)) * mib))
    return found


def _batched_rows(stdout: str) -> list[dict[str, Any]]:
    """llama-batched-bench's JSON-lines result rows."""
    return [json.loads(ln) for ln in stdout.splitlines() if ln.startswith("{") and "speed_tg" in ln]


def batched_bench_argv(binary: str | Path, req: BenchRequest, parallel: int, context: int) -> list[str]:
    """llama-batched-bench: common llama.cpp args, so `-dev` and `-ts` are comma-separated here (not '/')."""
    n_prompt = max(req.n_prompt, 1)
    argv = [str(binary), "-m", req.model_path, "-ngl", str(req.n_gpu_layers), "-c", str(context)]
    argv += ["-npp", str(n_prompt), "-ntg", str(req.n_gen), "-npl", str(parallel), "--output-format", "jsonl"]
    return argv + _device_args(req, ",") + list(req.extra)


def run_batched_bench(
    req: BenchRequest, parallel: int, context: int | None = None, binary: str | Path | None = None,
    timeout_s: float = 600,
) -> BenchResult:
    """Aggregate generation speed (`speed_tg`, all `parallel` sequences together) from llama-batched-bench."""
    if req.rpc:
        check_rpc_reachable(req.rpc)
    context = context or parallel * (max(req.n_prompt, 1) + req.n_gen) + 64
    argv = batched_bench_argv(_tool_binary("llama-batched-bench", binary), req, parallel, context)
    rows = _run_tool(argv, timeout_s, _batched_rows)
    row = rows[-1]
    return BenchResult(
        tokens_per_s=float(row["speed_tg"]),
        stddev_tokens_per_s=0.0,
        n_prompt=int(row.get("pp", 0)),
        n_gen=int(row.get("tg", 0)),
        samples_tokens_per_s=(float(row["speed_tg"]),),
        devices="/".join(req.devices),
        tensor_split="/".join(_fmt(v) for v in req.tensor_split),
        n_gpu_layers=int(row.get("n_gpu_layers", req.n_gpu_layers)),
        model_size_bytes=0,
        command=tuple(argv),
    )
