"""Scoring of placement options against a service's objective, and its SLO checks."""

from __future__ import annotations

import math

from gpumix.plan.candidates import Option, streams_held
from gpumix.plan.resolve import Resolved
from gpumix.plan.result import SloCheck

# Weights of the assignment objective: an LLM's lost speed dominates; a service's lost speed counts little (they
# are rarely the bottleneck); the share of fast memory a service occupies steers small services to the cheap card.
LLM_SPEED_WEIGHT = 100.0
SERVICE_SPEED_WEIGHT = 0.2
PRICE_WEIGHT = 1.0
SLO_MISS_PENALTY = 50.0
# A placement at a KV level that holds only part of its streams at full context costs up to this much more (× the
# share of streams not held): the solver gives an LLM room for its whole concurrency when that costs less than ~5%
# of its speed elsewhere (LLM_SPEED_WEIGHT × ln 1.05 ≈ 5), and takes that room from small services before it takes
# speed from other LLMs.
KV_SHORT_PENALTY = 5.0
# An image service in its low-memory setting (tiled VAE decode: slower images by an unmeasured amount) costs as much
# as occupying a whole card of the fleet's fastest memory: it is chosen only when the default leaves something out
# or takes room from an LLM's KV, never to move a service to a cheaper card.
LOW_MEMORY_PENALTY = 1.0


def slo_checks(svc: Resolved, opt: Option) -> list[SloCheck]:
    slo = svc.entry.slo
    if slo is None:
        return []
    checks = []
    for metric, target, predicted, higher_better in (
        ("decode_tokens_per_s", slo.decode_tokens_per_s, opt.decode, True),
        ("aggregate_tokens_per_s", slo.aggregate_tokens_per_s, opt.aggregate, True),
        ("ttft_ms", slo.ttft_ms, None if opt.ttft_s is None else opt.ttft_s * 1000, False),
        ("throughput", slo.throughput, opt.throughput, True),
    ):
        if target is None:
            continue
        if predicted is None or predicted <= 0:
            checks.append(SloCheck(metric=metric, target=target, predicted=predicted, met=False))
            continue
        margin = predicted / target - 1 if higher_better else target / predicted - 1
        low, high = _slo_range(opt, metric)
        checks.append(SloCheck(metric=metric, target=target, predicted=round(predicted, 3), met=margin >= 0,
                               margin=round(margin, 4), predicted_low=low, predicted_high=high))  # fmt: skip
    return checks


def _slo_range(opt: Option, metric: str) -> tuple[float | None, float | None]:
    """The 80 % range of an SLO's predicted value (Estimate.*_low/_high; TTFT in ms), or (None, None)."""
    est = opt.est if opt.decode else None
    name, scale = ("ttft_s", 1000.0) if metric == "ttft_ms" else (metric, 1.0)
    if est is None or not hasattr(est, f"{name}_low"):
        return None, None
    low, high = getattr(est, f"{name}_low"), getattr(est, f"{name}_high")
    if low is None or high is None:
        return None, None
    return round(low * scale, 3), round(high * scale, 3)


def score_options(svc: Resolved, options: list[Option], max_bandwidth: float) -> None:
    """Cost of each option (lower is better): log of the slowdown against the service's best option, weighted
    heavily for LLMs; plus the share of the fleet's fastest memory system it occupies (keeps big cards for big
    models); plus a penalty per missed SLO."""
    best = max((o.speed for o in options if o.fits()), default=0.0)
    weight = LLM_SPEED_WEIGHT if svc.model.kind == "llm" else SERVICE_SPEED_WEIGHT
    for opt in options:
        slowdown = math.log(best / opt.speed) if opt.speed > 0 and best > 0 else math.log(10.0)
        occupied = sum(d.spec.mem_bandwidth_gb_per_s for d in opt.devices if d.kind == "gpu") / max_bandwidth
        missed = sum(1 for c in slo_checks(svc, opt) if not c.met)
        short = KV_SHORT_PENALTY * (1 - streams_held(opt) / sum(opt.streams)) if opt.streams else 0.0
        low = LOW_MEMORY_PENALTY if opt.memory_setting == "low" else 0.0
        opt.cost = round(weight * max(slowdown, 0.0) + PRICE_WEIGHT * occupied + SLO_MISS_PENALTY * missed + short + low,
                         6)  # fmt: skip


