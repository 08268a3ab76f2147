"""KV budgets of LLM engine processes, as arithmetic (no planner types): how many tokens of KV a process may hold,
how a card's leftover memory is shared among the processes on it, and how replicas share a service's streams.

vLLM's paged KV cache and llama.cpp's unified KV (`--kv-unified`) are one pool per engine process, shared by all its
sequences. A process needs room for one full-`context` sequence to start and can use up to concurrency × context;
anything between serves the concurrency as long as the sequences' combined length fits. Memory grows linearly with
the budget (KV bytes per token on each device, plus llama.cpp's attention mask per cell), so the planner works with
bytes per token measured between two estimates and checks the final estimate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gpumix.estimate.memory import LLAMA_KV_CELL_ROUNDING
from gpumix.estimate.types import Workload

# vLLM allocates KV in blocks of 16 tokens (engines.md §2: page = 2·block_size(16)·kv_heads·head_size·dtype); llama.cpp
# rounds its cells up to 256. Budgets below the maximum are whole blocks / whole 256-cell steps.
VLLM_BLOCK_TOKENS = 16
# vLLM's CPU platform uses 128-token blocks when none is set (vllm/platforms/cpu.py, 0.32.0); launch rounds the
# budget up to them (gpumix.launch.commands._vllm_memory_args).
VLLM_CPU_BLOCK_TOKENS = 128


def kv_step(workload: Workload) -> int:
    return VLLM_BLOCK_TOKENS if workload.engine == "vllm" else LLAMA_KV_CELL_ROUNDING


def min_kv_tokens(workload: Workload) -> int:
    """One full-`context` sequence, in whole steps: what the engine needs to start (vLLM refuses a max_model_len its
    KV cannot hold)."""
    step = kv_step(workload)
    return math.ceil(workload.context / step) * step


def max_kv_tokens(workload: Workload, streams: int) -> int:
    """Every stream at full `context`."""
    return max(workload.context * streams, min_kv_tokens(workload))


def round_budget(tokens: float, low: int, high: int, step: int) -> int:
    """A budget between low and high; below high it is a whole number of steps (never below low)."""
    if tokens >= high:
        return high
    return max(low, int(tokens // step) * step)


@dataclass(frozen=True)
class Grower:
    """One engine process whose KV may grow: from `tokens` up to `max_tokens`, costing `bytes_per_token` on each of
    its devices."""

    tokens: int
    max_tokens: int
    bytes_per_token: Mapping[str, float]


def share_leftover(growers: Sequence[Grower], leftover_bytes: Mapping[str, float]) -> list[float]:
    """Extra tokens for each grower: max-min fair in the share of its maximum each pool holds. A water level rises
    from 0 to 1; a pool below it grows to that share of its maximum, a pool above it (the solver gave it more) keeps
    what it has; when a device fills, the pools on it stop where they are and the others keep rising."""
    frozen: dict[int, float] = {}
    active = {i for i, g in enumerate(growers) if g.max_tokens > g.tokens}
    devices = {d for g in growers for d in g.bytes_per_token}

    def extra(i: int, level: float) -> float:
        g = growers[i]
        return max(0.0, min(level, 1.0) * g.max_tokens - g.tokens)

    def over(level: float) -> set[str]:
        used = dict.fromkeys(devices, 0.0)
        for i, g in enumerate(growers):
            more = frozen.get(i, 0.0) if i not in active else extra(i, level)
            for device, per_token in g.bytes_per_token.items():
                used[device] += per_token * more
        return {d for d, u in used.items() if u > leftover_bytes.get(d, 0.0)}

    while active:
        if not over(1.0):
            frozen.update({i: extra(i, 1.0) for i in active})
            break
        low, high = 0.0, 1.0
        for _ in range(60):  # bisection: usage rises monotonically with the level
            mid = (low + high) / 2
            low, high = (low, mid) if over(mid) else (mid, high)
        full = over(high)
        stopped = {i for i in active if any(growers[i].bytes_per_token.get(d, 0.0) > 0 for d in full)} or set(active)
        frozen.update({i: extra(i, low) for i in stopped})
        active -= stopped
    return [frozen.get(i, 0.0) for i in range(len(growers))]


def replica_streams(concurrency: int, one_stream_s: Sequence[float], all_streams_s: Sequence[float],
                    capacity: Sequence[int]) -> list[int]:  # fmt: skip
    """How many of `concurrency` streams each replica serves, for the most aggregate tokens/s.

    A replica's decode step at n streams is modelled between two estimates — one stream (`one_stream_s`) and all of
    them (`all_streams_s`, at n = concurrency) — as linear in n (the weights are read once per step, each stream adds
    its KV reads), so its aggregate n / step(n) is concave. Every replica gets one stream; then each further stream
    goes where it adds the most tokens/s, within what each replica's KV holds at full context (`capacity`); once every
    replica is full, the rest go to the fastest (they wait for a free sequence there)."""
    n = len(one_stream_s)
    streams = [1] * n

    def aggregate(i: int, k: int) -> float:
        span = max(concurrency - 1, 1)
        step = one_stream_s[i] + (all_streams_s[i] - one_stream_s[i]) * (k - 1) / span
        return k / step if step > 0 else 0.0

    for _ in range(max(concurrency - n, 0)):
        open_ = [i for i in range(n) if streams[i] < capacity[i]]
        if open_:
            best = max(open_, key=lambda i: (aggregate(i, streams[i] + 1) - aggregate(i, streams[i]), -i))
        else:
            best = min(range(n), key=lambda i: (one_stream_s[i], i))
        streams[best] += 1
    return streams
