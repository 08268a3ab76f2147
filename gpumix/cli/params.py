"""Checks of option values shared by the commands."""

from __future__ import annotations

from typing import TypeVar

from gpumix.errors import GpumixError
from gpumix.kinds import Objective

T = TypeVar("T", bound=str)


def choice(value: str, allowed: tuple[T, ...], option: str) -> T:
    """``value`` as one of ``allowed`` (typed as the caller's Literal), else a one-line error naming the option."""
    for candidate in allowed:
        if value == candidate:
            return candidate
    raise GpumixError(f"unknown {option} {value!r}", hint=f"use one of: {', '.join(allowed)}")


OBJECTIVES: tuple[Objective, ...] = ("latency", "throughput")
OBJECTIVE_HELP = "latency (one stream fastest) | throughput (aggregate tokens/s)"


def objective(value: str) -> Objective:
    return choice(value, OBJECTIVES, "--objective")
