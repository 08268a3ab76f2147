"""Render each plan service as the exact engine processes to run: argv + pinned environment (LaunchSpec).

Flag names are from /work/shared/reference/engines.md (llama.cpp §1, vLLM §3, TEI §4, whisper.cpp §5,
stable-diffusion.cpp §6). Nothing here runs anything; `gpumix.run` and the exporters consume the specs.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Iterator
from itertools import count

from gpumix.errors import GpumixError
from gpumix.launch import llamacpp
from gpumix.launch.models import model_source, resolve_hf_repo, resolve_model_file
from gpumix.launch.spec import LaunchSpec
from gpumix.launch.vllm_install import VLLM_VERSION, vllm_binary
from gpumix.launch.vllm_models import is_quantized_checkpoint, local_model_dir, vllm_model_arg
from gpumix.plan.result import Plan, PlannedDevice, PlannedService

LOOPBACK = "127.0.0.1"
DEFAULT_BASE_PORT = 8001

# Readiness probes: llama-server, vLLM, TEI and whisper-server serve GET /health; sd-server has none,
# so /v1/models stands in (engines.md §1.2, §3, §4, §5, §6).
HEALTH_PATHS = {"llama.cpp": "/health", "vllm": "/health", "tei": "/health", "whisper": "/health", "image": "/v1/models"}
# Binaries looked up on PATH for engines gpumix does not install (vLLM: gpumix.launch.vllm_install.vllm_binary).
ENGINE_BINARIES = {"tei": "text-embeddings-router", "whisper": "whisper-server", "image": "sd-server"}
# Container images for compose. llama.cpp and TEI tags are from their READMEs (engines.md §4 lists the TEI
# arch tags); the whisper.cpp and sd.cpp image names are [unverified] and marked so in the compose file.
IMAGES_GPU = {
    "llama.cpp": "ghcr.io/ggml-org/llama.cpp:server-cuda",
    "vllm": f"vllm/vllm-openai:v{VLLM_VERSION}",  # the version whose parser checks gpumix's vLLM commands
    "tei": "ghcr.io/huggingface/text-embeddings-inference:cuda-1.9",
    "whisper": "ghcr.io/ggml-org/whisper.cpp:main-cuda",
    "image": "ghcr.io/leejet/stable-diffusion.cpp:master-cuda",
}
IMAGES_CPU = {
    "llama.cpp": "ghcr.io/ggml-org/llama.cpp:server",
    # vLLM's CPU image (docs.vllm.ai, "Using Docker": x86-64 CPU release repo); the version tag is [unverified].
    "vllm": f"public.ecr.aws/q9t5s3a7/vllm-cpu-release-repo:v{VLLM_VERSION}",
    "tei": "ghcr.io/huggingface/text-embeddings-inference:cpu-1.9",
    "whisper": "ghcr.io/ggml-org/whisper.cpp:main",
    "image": "ghcr.io/leejet/stable-diffusion.cpp:master",
}
UNVERIFIED_IMAGES = {IMAGES_GPU["whisper"], IMAGES_GPU["image"], IMAGES_CPU["whisper"], IMAGES_CPU["image"], IMAGES_CPU["vllm"]}
# Quantised KV caches need flash attention in llama.cpp ("a quantized V cache needs FA", engines.md §1.1).
_FULL_PRECISION_KV = {"f32", "f16", "bf16"}


def endpoints_of(service: PlannedService) -> list[str]:
    return list(service.served_endpoints())


def engine_binary(engine: str) -> str:
    """Absolute path when known (gpumix's llama.cpp build, or found on PATH), else the bare name."""
    if engine == "llama.cpp":
        install = llamacpp.find_llama_cpp()
        return str(install.bin_dir / "llama-server") if install else "llama-server"
    if engine == "vllm":
        return vllm_binary(on_gpu=True)
    name = ENGINE_BINARIES[engine]
    return shutil.which(name) or name


def gpu_ids(plan: Plan, device_indices: list[int]) -> list[str]:
    """CUDA_VISIBLE_DEVICES entries for the GPUs among `device_indices`, in engine order.

    UUIDs when the plan has them for every GPU (they survive re-numbering), else PCI-order indices."""
    gpus = [_device(plan, index) for index in device_indices if _device(plan, index).kind == "gpu"]
    if gpus and all(dev.uuid for dev in gpus):
        return [str(dev.uuid) for dev in gpus]
    return [str(dev.index) for dev in gpus]


def pinning_env(ids: list[str]) -> dict[str, str]:
    # PCI_BUS_ID makes CUDA count like nvidia-smi/NVML (engines.md §9); "" hides every GPU from CPU services.
    return {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": ",".join(ids)}


def render_plan(
    plan: Plan, base_port: int = DEFAULT_BASE_PORT, allocate_port: Callable[[], int] | None = None
) -> list[LaunchSpec]:
    """Every process of every service. Ports are base_port, base_port+1, ... unless `allocate_port` is given."""
    ports: Iterator[int] = iter(allocate_port, None) if allocate_port else count(base_port)  # type: ignore[arg-type]
    specs: list[LaunchSpec] = []
    for service in plan.services:
        for replica, devices in enumerate(process_devices(service)):
            specs.append(render_process(plan, service, replica, devices, next(ports)))
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise GpumixError("plan has duplicate service names", hint="give every service a unique name")
    return specs


def process_devices(service: PlannedService) -> list[list[int]]:
    """The devices of each process: replica mode runs one process per device, otherwise `replicas` copies."""
    if service.mode == "replica":
        return [[index] for index in service.devices]
    return [list(service.devices) for _ in range(max(1, service.replicas))]


def render_process(plan: Plan, service: PlannedService, replica: int, devices: list[int], port: int) -> LaunchSpec:
    renderer = _RENDERERS.get(service.engine)
    if renderer is None:
        raise GpumixError(f"service '{service.name}': unknown engine '{service.engine}'")
    ids = gpu_ids(plan, devices)
    argv, files, entry_argc = renderer(plan, service, devices, port)
    table = IMAGES_GPU if ids else IMAGES_CPU
    return LaunchSpec(
        service=service.name,
        replica=replica,
        replicas=len(process_devices(service)),
        engine=service.engine,
        argv=argv,
        env=pinning_env(ids) | _engine_env(plan, service, devices),
        host=LOOPBACK,
        port=port,
        health_path=HEALTH_PATHS[service.engine],
        gpu_ids=ids,
        files=files,
        image=table[service.engine],
        container_entrypoint=None if service.engine in ("llama.cpp", "tei") else argv[:entry_argc],
        container_args=argv[entry_argc:],
    )


def _device(plan: Plan, index: int) -> PlannedDevice:
    try:
        return plan.device(index)
    except KeyError:
        raise GpumixError(
            f"plan names device {index}, which is not in its device list", hint="re-run `gpumix plan`"
        ) from None


def _gpu_positions(plan: Plan, devices: list[int]) -> list[int]:
    """Positions (in the service's device list) of its GPU devices."""
    return [pos for pos, index in enumerate(devices) if _device(plan, index).kind == "gpu"]


def _fmt_share(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.4g}"


def _tensor_split(service: PlannedService, gpu_positions: list[int]) -> list[str]:
    """-ts values for the GPU devices, from the plan's tensor_split, else layer counts, else fractions."""
    for values in (service.tensor_split, service.layers, service.split):
        if len(values) == len(service.devices):
            return [_fmt_share(values[pos]) for pos in gpu_positions]
        if values and len(values) == len(gpu_positions):
            return [_fmt_share(v) for v in values]
    return []


def _llama_server(plan: Plan, service: PlannedService, devices: list[int], port: int) -> tuple[list[str], list[str], int]:
    model = resolve_model_file(service.name, service.model, service.model_path, gguf_quant=service.quant)
    slots = max(1, service.concurrency)
    # With an explicit -np the KV cache is not unified, so each slot gets n_ctx/np cells (engines.md §1.1):
    # -c = per-request context × slots gives every slot the planned context.
    argv = [engine_binary("llama.cpp"), "-m", str(model), "-a", service.name, "--host", LOOPBACK, "--port", str(port),
            "--metrics", "-c", str(service.context * slots), "-np", str(slots)]  # fmt: skip
    if service.threads:
        argv += ["-t", str(service.threads)]
    if service.kv_cache_dtype:
        argv += ["-ctk", service.kv_cache_dtype, "-ctv", service.kv_cache_dtype]
        if service.kv_cache_dtype not in _FULL_PRECISION_KV:
            argv += ["-fa", "on"]
    # What the server serves follows the plan's endpoints, so an LLM file planned with `task: embeddings` is an
    # embeddings server too.
    served = endpoints_of(service)
    if service.model_kind == "reranker" or "/v1/rerank" in served:
        argv += ["--rerank"]
    elif service.model_kind == "embedding" or "/v1/embeddings" in served:
        argv += ["--embeddings", "--pooling", "mean"]
    argv += _llama_gpu_args(plan, service, devices)
    return argv, [str(model)], 1


def _llama_gpu_args(plan: Plan, service: PlannedService, devices: list[int]) -> list[str]:
    positions = _gpu_positions(plan, devices)
    if not positions:
        return ["-ngl", "0", "-dev", "none"]
    ngl = str(service.n_gpu_layers) if service.n_gpu_layers is not None else "all"
    # Device names count only the GPUs CUDA_VISIBLE_DEVICES leaves visible, in its order: CUDA0, CUDA1, ...
    args = ["-ngl", ngl, "-dev", ",".join(f"CUDA{i}" for i in range(len(positions)))]
    if len(positions) == 1:
        return args + ["-sm", "none", "-mg", "0"]
    if service.mode == "tensor_parallel":
        args += ["-sm", "tensor", "-fa", "on"]  # -sm tensor needs flash attention (engines.md §1.1)
    else:
        args += ["-sm", "layer"]
    shares = _tensor_split(service, positions) if service.mode != "replica" else []
    if shares:
        args += ["-ts", ",".join(shares)]
    return args + ["-mg", "0"]


def _vllm(plan: Plan, service: PlannedService, devices: list[int], port: int) -> tuple[list[str], list[str], int]:
    gpus = _gpu_positions(plan, devices)
    # One rank per GPU; without GPUs, one rank per CPU device (vLLM's CPU build: a NUMA node or a core range each).
    ranks = len(gpus) if gpus else len(devices)
    tp, pp = (ranks, 1) if service.mode == "tensor_parallel" else (1, ranks) if ranks > 1 else (1, 1)
    model = vllm_model_arg(service)
    argv = [vllm_binary(on_gpu=bool(gpus)), "serve", model, "--host", LOOPBACK, "--port", str(port),
            "--served-model-name", service.name, "--tensor-parallel-size", str(tp), "--pipeline-parallel-size", str(pp),
            "--max-model-len", str(service.context), "--max-num-seqs", str(max(1, service.concurrency))]  # fmt: skip
    argv += _vllm_memory_args(plan, service, devices) + _vllm_quant_args(service, model)
    if service.kv_cache_dtype:
        argv += ["--kv-cache-dtype", service.kv_cache_dtype]
    if not gpus:
        # No CUDA graphs to capture on a CPU; eager mode also skips torch.compile, the slowest part of a CPU start.
        argv += ["--enforce-eager"]
    local = local_model_dir(service)
    return argv, [str(local)] if local else [], 2


# vLLM's KV block (tokens per page) when not set: 16 on CUDA (CacheConfig default), 128 on the CPU platform
# (vllm/platforms/cpu.py, 0.32). One block of the pool is the permanent null block, never given to a request.
VLLM_BLOCK_TOKENS = {"gpu": 16, "cpu": 128}


def _vllm_memory_args(plan: Plan, service: PlannedService, devices: list[int]) -> list[str]:
    """The plan's KV budget as vLLM's own setting. --kv-cache-memory-bytes is per worker (GPU, or CPU rank) and
    vLLM sizes its block pool by the worker with the fewest blocks, so every worker gets the largest per-device KV
    the plan books: each pipeline stage then holds the planned tokens for its layers. The bytes cover the planned
    tokens rounded up to whole blocks plus vLLM's null block, so vLLM can hold exactly what the plan says. On a CPU
    this is the only sane setting: --gpu-memory-utilization would be a share of *system* RAM (0.92 by default)."""
    kv = [b.kv_cache_bytes for b in service.memory_breakdown if b.kv_cache_bytes > 0]
    if kv and len(kv) == len(service.memory_breakdown):
        tokens = vllm_planned_kv_tokens(service)
        block = VLLM_BLOCK_TOKENS["gpu" if _gpu_positions(plan, devices) else "cpu"]
        asked_tokens = (math.ceil(tokens / block) + 1) * block
        return ["--kv-cache-memory-bytes", str(math.ceil(max(kv) * asked_tokens / tokens))]
    shares = [
        service.memory_bytes[pos] / _device(plan, index).memory_total_bytes
        for pos, index in enumerate(service.devices)
        if pos < len(service.memory_bytes) and index in devices and _device(plan, index).kind == "gpu"
    ]
    if not shares:
        return []
    return ["--gpu-memory-utilization", f"{min(0.98, max(0.05, math.ceil(max(shares) * 100) / 100)):.2f}"]


def vllm_planned_kv_tokens(service: PlannedService) -> int:
    """Tokens of KV the plan books for the service: its `kv_cache_tokens` budget once the planner gives one,
    else context × concurrency (what memory_breakdown's kv_cache_bytes hold today)."""
    budget = getattr(service, "kv_cache_tokens", None)
    return int(budget) if budget else service.context * max(1, service.concurrency)


def _vllm_quant_args(service: PlannedService, model: str) -> list[str]:
    quant = service.quant.lower()
    if quant in ("fp16", "f16", "half"):
        return ["--dtype", "half"]
    if quant in ("bf16", "bfloat16"):
        return ["--dtype", "bfloat16"]
    if quant.startswith("fp8") and not is_quantized_checkpoint(service, model):
        return ["--quantization", "fp8"]  # online FP8 of a full-precision checkpoint
    # AWQ/GPTQ/FP8 checkpoints carry their quantization config; vLLM reads it, so no flag is needed.
    return []


def _tei(plan: Plan, service: PlannedService, devices: list[int], port: int) -> tuple[list[str], list[str], int]:
    repo = resolve_hf_repo(service.name, service.model, service.model_path)
    on_gpu = bool(_gpu_positions(plan, devices))
    argv = [engine_binary("tei"), "--model-id", repo, "--hostname", LOOPBACK, "--port", str(port),
            "--served-model-name", service.name, "--dtype", "float16" if on_gpu else "float32"]  # fmt: skip
    return argv, [], 1


def _whisper(plan: Plan, service: PlannedService, devices: list[int], port: int) -> tuple[list[str], list[str], int]:
    model = resolve_model_file(service.name, service.model, service.model_path)
    argv = [engine_binary("whisper"), "-m", str(model), "--host", LOOPBACK, "--port", str(port),
            "--inference-path", "/v1/audio/transcriptions"]  # fmt: skip
    if service.threads:
        argv += ["-t", str(service.threads)]
    if not _gpu_positions(plan, devices):
        argv += ["-ng"]
    return argv, [str(model)], 1


def _sd_server(plan: Plan, service: PlannedService, devices: list[int], port: int) -> tuple[list[str], list[str], int]:
    model = resolve_model_file(service.name, service.model, service.model_path)
    source = model_source(service.model)
    flag = source.sd_flag if source and not service.model_path else "-m"
    argv = [engine_binary("image"), flag, str(model), "-l", LOOPBACK, "--listen-port", str(port)]
    if service.threads:
        argv += ["-t", str(service.threads)]
    return argv, [str(model)], 1


def _engine_env(plan: Plan, service: PlannedService, devices: list[int]) -> dict[str, str]:
    if service.engine != "vllm":
        return {}
    # vLLM reports usage statistics to its authors' server unless told not to; gpumix services do not phone home.
    env = {"VLLM_NO_USAGE_STATS": "1"}
    gpus = _gpu_positions(plan, devices)
    ranks = len(gpus) if gpus else len(devices)
    if service.mode in ("pipeline_parallel", "layer_split") and len(service.layers) == ranks and ranks > 1:
        # Exactly pp entries summing to num_hidden_layers (engines.md §3).
        env["VLLM_PP_LAYER_PARTITION"] = ",".join(str(n) for n in service.layers)
    if not gpus and service.threads:
        # OpenMP threads per CPU rank: rank r on cores [r*t, (r+1)*t). Without `threads` vLLM binds one NUMA node per
        # rank ("auto"), which fails for TP/PP on a one-node machine.
        t = service.threads
        env["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(
            str(r * t) if t == 1 else f"{r * t}-{(r + 1) * t - 1}" for r in range(ranks)
        )
    if local_model_dir(service) is not None:
        env["HF_HUB_OFFLINE"] = "1"  # a local directory: nothing to fetch, so never wait on the hub
    return env


_RENDERERS = {"llama.cpp": _llama_server, "vllm": _vllm, "tei": _tei, "whisper": _whisper, "image": _sd_server}
