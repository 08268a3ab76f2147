"""Units. Capacities are integer bytes; GB means 10**9 bytes and GiB 2**30 (stated at every use)."""

from __future__ import annotations

GB = 10**9  # decimal gigabyte: GPU vendors' VRAM and bandwidth figures use it
GiB = 2**30  # binary gibibyte: llama.cpp, nvidia-smi and NVML print these
MiB = 2**20


def gb_to_bytes(value_gb: float) -> int:
    return int(round(value_gb * GB))


def gib_to_bytes(value_gib: float) -> int:
    return int(round(value_gib * GiB))


def bytes_to_gib(value_bytes: float) -> float:
    return value_bytes / GiB


def bytes_to_gb(value_bytes: float) -> float:
    return value_bytes / GB


def fmt_gib(value_bytes: float) -> str:
    return f"{value_bytes / GiB:.2f} GiB"
