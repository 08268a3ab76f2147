"""Lint checks about the hosts a plan runs on (codes GPX018-GPX021 in gpumix.plan.lint's table): power supply, driver
branch per architecture, CUDA and ROCm cards in one split, one model served twice while another service waits."""

from __future__ import annotations

from typing import Literal

from gpumix.estimate.calibration import default_backend
from gpumix.hardware.spec import Device
from gpumix.plan.candidates import Option
from gpumix.plan.planning import Planning
from gpumix.plan.resolve import Resolved
from gpumix.plan.result import Warning_

# Transient load of a GPU above its board power, for milliseconds: the reference scenario's RTX 4090 (450 W board
# power) spikes to ~600 W = x1.33. Measured on an RTX 5090 Founders Edition (575 W) by Igor's Lab: 738 W for up to
# 10 ms (x1.28) and 901 W for under 1 ms (x1.57) (as reported by SlashGear, "RTX 5090: how much power can it pull",
# 2025-07-07, https://www.slashgear.com/1902896/rtx-5090-how-much-power-can-pull-nvidia-geforce-gpu/). PCIe CEM 5.0
# allows excursions up to 3x sustained power for 100 µs (Intel's Stephen Eastman to PCWorld, via TweakTown
# 2022-04-22, https://www.tweaktown.com/news/85717/pcie-5-0-gpus-can-have-power-excursions-use-up-to-1800w-of/index.html).
GPU_TRANSIENT_FACTOR = 600 / 450
# The rest of a box (board, RAM, drives, fans): Intel's sizing example for ATX 3.0 (300 W GPU + 300 W CPU + 150 W for
# "the rest of the hardware" on a 750 W PSU; same TweakTown/PCWorld source).
REST_OF_SYSTEM_W = 150.0
# A CPU without a catalog model: a 105 W-TDP desktop part at its package power limit (AMD PPT = 1.35 x TDP = 142 W).
DEFAULT_CPU_W = 142.0
# ATX 3.0 PSUs with a 12VHPWR connector must ride 200% of rated power for 100 µs, 180% for 1 ms, 160% for 10 ms and
# 120% for 100 ms (Intel ATX 3.0 Multi Rail Desktop Platform Power Supply Design Guide, doc 336521; summarised by
# HotHardware, "PSU makers can skirt ATX 3.0 tolerance testing", 2022).
ATX3_NOTE = "an ATX 3.x PSU is specified to ride 160% of its rating for 10 ms; an ATX 2.x one may trip its over-current protection"

# The first CUDA toolkit with kernels for each compute capability, and the Linux driver it needs (NVIDIA CUDA Toolkit
# Release Notes, Table 3 "CUDA Toolkit and Corresponding Driver Versions", docs.nvidia.com/cuda/cuda-toolkit-release-
# notes: CUDA 12.8 GA >= 570.26, 11.8 GA >= 520.61.05, 11.1 GA >= 455.23, 11.0.2 GA >= 450.51.05, 10.0.130 >= 410.48,
# 9.0.76 >= 384.81, 8.0.44 >= 367.48). A card's compute capability is in the GPU catalog.
MIN_DRIVER_BY_CC: tuple[tuple[tuple[int, int], str, str, str], ...] = (
    ((10, 0), "Blackwell", "12.8", "570.26"),
    ((9, 0), "Hopper", "11.8", "520.61.05"),
    ((8, 9), "Ada Lovelace", "11.8", "520.61.05"),
    ((8, 6), "Ampere (GA10x)", "11.1", "455.23"),
    ((8, 0), "Ampere (GA100)", "11.0", "450.51.05"),
    ((7, 5), "Turing", "10.0", "410.48"),
    ((7, 0), "Volta", "9.0", "384.81"),
    ((6, 0), "Pascal", "8.0", "367.48"),
)
SPLIT_MODES = ("layer_split", "cpu_offload", "tensor_parallel", "pipeline_parallel")


Severity = Literal["info", "warning", "error"]


def _w(code: str, slug: str, message: str, service: str | None = None, severity: Severity = "warning") -> Warning_:
    return Warning_(code=f"{code}-{slug}", message=message, service=service, severity=severity)


# ------------------------------------------------------------------------------------------------ GPX018 power


def power_checks(ctx: Planning) -> list[Warning_]:
    """GPX018: a host's GPUs (board power), CPU and the rest against its declared PSU, steady and with transients."""
    out = []
    for host in dict.fromkeys(d.host for d in ctx.devices):
        psu = ctx.spec.psu_w_of(host)
        if psu is None:
            continue
        devices = [d for d in ctx.devices if d.host == host]
        gpus = [d for d in devices if d.kind == "gpu"]
        gpu_w = sum(d.spec.tdp_w or 0.0 for d in gpus)
        unknown = [d.name for d in gpus if d.spec.tdp_w is None]
        cpu = next((d for d in devices if d.kind == "cpu"), None)
        cpu_w = cpu.spec.tdp_w if cpu is not None and cpu.spec.tdp_w else DEFAULT_CPU_W
        steady = gpu_w + cpu_w + REST_OF_SYSTEM_W
        spikes = gpu_w * GPU_TRANSIENT_FACTOR + cpu_w + REST_OF_SYSTEM_W
        where = f"host {host}" if host else "this machine"
        parts = (f"GPUs {gpu_w:.0f} W ({' + '.join(f'{d.name} {d.spec.tdp_w:.0f}' for d in gpus if d.spec.tdp_w)}) "
                 f"+ CPU {cpu_w:.0f} W{'' if cpu is not None and cpu.spec.tdp_w else ' (assumed)'} + rest of system "
                 f"{REST_OF_SYSTEM_W:.0f} W")  # fmt: skip
        missing = f"; no board power known for {', '.join(unknown)}" if unknown else ""
        if steady > psu:
            out.append(_w("GPX018", "psu-undersized", f"{where}: {parts} = {steady:.0f} W at full load, above its "
                          f"{psu:.0f} W power supply; use a bigger PSU or cap the cards (nvidia-smi -pl){missing}",
                          severity="error"))  # fmt: skip
        elif spikes > psu:
            out.append(_w("GPX018", "psu-undersized", f"{where}: {parts} = {steady:.0f} W steady fits its {psu:.0f} W "
                          f"power supply, but GPU transients (x{GPU_TRANSIENT_FACTOR:.2f}: a 450 W RTX 4090 spikes to "
                          f"~600 W for milliseconds) reach {spikes:.0f} W; {ATX3_NOTE}; stagger service starts{missing}"))  # fmt: skip
    return out


# ------------------------------------------------------------------------------------------------ GPX019 driver


def _version(text: str) -> tuple[int, ...] | None:
    parts = text.strip().split(".")
    return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) and parts != [""] else None


def min_driver(device: Device) -> tuple[str, str, str] | None:
    """(architecture, CUDA version, minimum Linux driver) for an NVIDIA card with a known compute capability."""
    cc = device.spec.compute_capability
    if device.kind != "gpu" or device.spec.vendor.upper() != "NVIDIA" or not cc:
        return None
    major, _, minor = cc.partition(".")
    if not (major.isdigit() and minor.isdigit()):
        return None
    for floor, arch, cuda, driver in MIN_DRIVER_BY_CC:
        if (int(major), int(minor)) >= floor:
            return arch, cuda, driver
    return None


def driver_checks(ctx: Planning) -> list[Warning_]:
    """GPX019: a card's reported driver (`driver:` on its entry) is older than the first that supports its arch."""
    out = []
    for d in ctx.devices:
        need = min_driver(d)
        have = _version(d.driver_version) if d.driver_version else None
        if need is None or have is None:
            continue
        arch, cuda, driver = need
        if have < (_version(driver) or ()):
            out.append(_w("GPX019", "driver-too-old",
                          f"device {d.id} ({d.name}, {arch}, compute capability {d.spec.compute_capability}) reports "
                          f"driver {d.driver_version}: its first CUDA toolkit, {cuda}, needs driver >= {driver} on "
                          f"Linux (NVIDIA CUDA release notes, table 3); install the R{driver.split('.')[0]} branch or "
                          "newer for every card of the host", severity="error"))  # fmt: skip
    return out


# ------------------------------------------------------------------------------------------------ GPX020 backends


def backend_mix(svc: Resolved, opt: Option) -> list[Warning_]:
    """GPX020: one split over cards of different GPU backends (CUDA and ROCm, or Metal)."""
    gpus = [d for d in opt.devices if d.kind == "gpu"]
    backends = sorted({default_backend(d.spec) for d in gpus})
    if opt.mode not in SPLIT_MODES or len(backends) < 2:
        return []
    name = svc.entry.name
    cards = "; ".join(f"{b}: {', '.join(d.name for d in gpus if default_backend(d.spec) == b)}" for b in backends)
    if svc.engine == "vllm":
        why = "vLLM runs one GPU platform per process (CUDA or ROCm), so tensor/pipeline parallel cannot span both"
        fix = "keep the split on one vendor's cards"
    else:
        why = ("a llama.cpp build compiles its ROCm (HIP) backend from the CUDA sources (ggml/src/ggml-hip/CMakeLists.txt "
               "globs ../ggml-cuda/*.cu), so one build holds one of them unless both are loadable modules "
               "(GGML_BACKEND_DL, docs/build.md)")  # fmt: skip
        fix = ("run the split on the Vulkan backend, which drives both vendors in one process (llama.cpp PR #5321 split "
               "a 3090 with a Radeon Pro VII), or serve the other vendor's card from a ggml-rpc-server built for it "
               "(--rpc); the predictions assume each card's native backend")  # fmt: skip
    return [_w("GPX020", "cuda-rocm-split", f"{name}: one split over cards of different backends ({cards}): {why}; {fix}",
               name)]  # fmt: skip


# ------------------------------------------------------------------------------------------------ GPX021 duplicates


def duplicate_models(ctx: Planning) -> list[Warning_]:
    """GPX021: two services serve the same model (and quant) from different cards of one host while another service
    found no room."""
    waiting = [s.entry.name for s, o in zip(ctx.services, ctx.chosen, strict=True) if o is None]
    if not waiting:
        return []
    groups: dict[tuple[str, str, str | None], list[tuple[Resolved, Option]]] = {}
    for svc, opt in zip(ctx.services, ctx.chosen, strict=True):
        hosts = {d.host for d in opt.devices} if opt is not None else set()
        if opt is not None and len(hosts) == 1:
            groups.setdefault((svc.model.id, svc.quant.id, hosts.pop()), []).append((svc, opt))
    out = []
    for (_, quant, host), served in groups.items():
        cards = {d.id for _, opt in served for d in opt.devices}
        if len(served) < 2 or len(cards) < 2:
            continue
        names = [svc.entry.name for svc, _ in served]
        freed = min(sum(opt.memory_bytes) for _, opt in served) / 1e9
        where = f"host {host}" if host else "this box"
        out.append(_w("GPX021", "duplicate-model-crowds-out",
                      f"{' and '.join(names)} all serve {served[0][0].model.name} {quant} (on "
                      f"{', '.join(sorted(cards))} of {where}) while {', '.join(waiting)} found no room: serve the "
                      f"model once (one service; the gateway can route both names to it) and give the freed "
                      f"~{freed:.1f} GB to {waiting[0]}", names[0]))  # fmt: skip
    return out


def service_checks(svc: Resolved, opt: Option) -> list[Warning_]:
    return backend_mix(svc, opt)


def plan_checks(ctx: Planning) -> list[Warning_]:
    return [*power_checks(ctx), *driver_checks(ctx), *duplicate_models(ctx)]
