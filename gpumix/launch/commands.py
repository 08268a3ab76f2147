"""Render each plan service as the exact engine processes to run: argv + pinned environment (LaunchSpec).

Flag names are from /work/shared/reference/engines.md (llama.cpp §1, vLLM §3, TEI §4, whisper.cpp §5,
stable-diffusion.cpp §6). Nothing here runs anything; `gpumix.run` and the exporters consume the specs.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import count

from gpumix.errors import GpumixError
from gpumix.launch import llamacpp
from gpumix.launch.models import model_source, models_dir, resolve_hf_repo, resolve_model_file
from gpumix.launch.spec import LaunchSpec
from gpumix.launch.vllm_install import VLLM_VERSION, vllm_binary
from gpumix.launch.vllm_models import is_quantized_checkpoint, local_model_dir, vllm_model_arg
from gpumix.plan import kvmath
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
        return llama_binary("llama-server")
    if engine == "vllm":
        return vllm_binary(on_gpu=True)
    name = ENGINE_BINARIES[engine]
    return shutil.which(name) or name


def llama_binary(name: str) -> str:
    """A binary of gpumix's llama.cpp build (llama-server, ggml-rpc-server, ...), else the bare name."""
    install = llamacpp.find_llama_cpp()
    return str(install.bin_dir / name) if install else name


def gpu_ids(plan: Plan, device_ids: list[str]) -> list[str]:
    """CUDA_VISIBLE_DEVICES entries for the GPUs among `device_ids` (all on one host), in engine order: that
    host's UUIDs when the plan has them for every one (they survive re-numbering), else its PCI-order indices."""
    gpus = [dev for dev in (_device(plan, i) for i in device_ids) if dev.kind == "gpu"]
    if len({dev.host for dev in gpus}) > 1:
        raise GpumixError(f"devices {', '.join(device_ids)} are on several hosts; one process runs on one host")
    if gpus and all(dev.uuid for dev in gpus):
        return [str(dev.uuid) for dev in gpus]
    return [str(dev.index) for dev in gpus]


def pinning_env(ids: list[str]) -> dict[str, str]:
    # PCI_BUS_ID makes CUDA count like nvidia-smi/NVML (engines.md §9); "" hides every GPU from CPU services.
    return {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": ",".join(ids)}


@dataclass(frozen=True)
class Process:
    """One engine process of a service: its devices (plan ids, engine order) and the host that runs it. A llama.cpp
    split across hosts reaches its remote devices through `rpc` (loopback endpoints of its ggml-rpc-server workers,
    forwarded from their hosts: RPC0, RPC1, ... in that order)."""

    service: PlannedService
    replica: int
    replicas: int
    devices: list[str]
    host: str | None
    rpc: tuple[str, ...] = ()

    def local(self, plan: Plan) -> list[str]:
        """The devices on this process's own host."""
        return [i for i in self.devices if _device(plan, i).host == self.host]


def render_plan(
    plan: Plan, base_port: int = DEFAULT_BASE_PORT, allocate_port: Callable[[], int] | None = None
) -> list[LaunchSpec]:
    """Every process of every service (on every host). Ports are base_port, base_port+1, ... unless
    `allocate_port` is given."""
    ports: Iterator[int] = iter(allocate_port, None) if allocate_port else count(base_port)
    specs: list[LaunchSpec] = []
    for service in plan.services:
        groups = process_devices(service)
        for replica, devices in enumerate(groups):
            specs += render_processes(plan, service, replica, len(groups), devices, ports)
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise GpumixError("plan has duplicate service names", hint="give every service a unique name")
    return specs


def specs_for_host(specs: list[LaunchSpec], host: str | None) -> list[LaunchSpec]:
    return [spec for spec in specs if spec.host_name == host]


def process_hosts(specs: list[LaunchSpec]) -> list[str | None]:
    """The hosts that run processes of the plan, in plan order (`[None]` for a one-machine plan)."""
    return list(dict.fromkeys(spec.host_name for spec in specs))


def process_devices(service: PlannedService) -> list[list[str]]:
    """The devices of each process: replica mode runs one process per device, otherwise `replicas` copies."""
    if service.mode == "replica":
        return [[device_id] for device_id in service.devices]
    return [list(service.devices) for _ in range(max(1, service.replicas))]


def render_processes(plan: Plan, service: PlannedService, replica: int, replicas: int, devices: list[str],
                     ports: Iterator[int]) -> list[LaunchSpec]:  # fmt: skip
    """The server process of one replica, plus one ggml-rpc-server per remote device of a llama.cpp split that
    crosses hosts."""
    host = _device(plan, devices[0]).host if devices else None
    proc = Process(service, replica, replicas, devices, host)
    port = next(ports)
    remote = [i for i in devices if i not in proc.local(plan)]
    if not remote or service.engine != "llama.cpp":
        return [render_process(plan, proc, port)]
    workers = [_rpc_worker(plan, proc, j, device_id, next(ports)) for j, device_id in enumerate(remote)]
    proc = Process(service, replica, replicas, devices, host, tuple(f"{LOOPBACK}:{w.port}" for w in workers))
    return [render_process(plan, proc, port), *workers]


def render_process(plan: Plan, proc: Process, port: int) -> LaunchSpec:
    service = proc.service
    renderer = _RENDERERS.get(service.engine)
    if renderer is None:
        raise GpumixError(f"service '{service.name}': unknown engine '{service.engine}'")
    ids = gpu_ids(plan, proc.local(plan))
    argv, files, entry_argc = renderer(plan, proc, port)
    table = IMAGES_GPU if ids else IMAGES_CPU
    return LaunchSpec(
        service=service.name,
        replica=proc.replica,
        replicas=proc.replicas,
        engine=service.engine,
        host_name=proc.host,
        devices=proc.devices,
        argv=argv,
        env=pinning_env(ids) | _engine_env(plan, service, proc.devices),
        host=LOOPBACK,
        port=port,
        health_path=HEALTH_PATHS[service.engine],
        gpu_ids=ids,
        files=files,
        image=table[service.engine],
        container_entrypoint=None if service.engine in ("llama.cpp", "tei") else argv[:entry_argc],
        container_args=argv[entry_argc:],
        notes=_cross_host_notes(plan, proc),
    )


def _rpc_worker(plan: Plan, proc: Process, j: int, device_id: str, port: int) -> LaunchSpec:
    """ggml-rpc-server for one remote device of a split (engines.md §1.5). It has no authentication, so it binds
    loopback on its host; the main host reaches it through a forwarded port (see the note)."""
    device = _device(plan, device_id)
    ids = gpu_ids(plan, [device_id])
    argv = [llama_binary("ggml-rpc-server"), "-H", LOOPBACK, "-p", str(port)]
    if device.kind == "cpu" and proc.service.threads:
        argv += ["-t", str(proc.service.threads)]
    return LaunchSpec(
        service=proc.service.name, replica=proc.replica, replicas=proc.replicas, engine="llama.cpp",
        role="rpc-worker", part=f"rpc{j}", host_name=device.host, devices=[device_id], argv=argv,
        env=pinning_env(ids), host=LOOPBACK, port=port, health_path=None, gpu_ids=ids,
        image=(IMAGES_GPU if ids else IMAGES_CPU)["llama.cpp"], container_entrypoint=["ggml-rpc-server"],
        container_args=argv[1:],
        notes=[f"RPC worker (RPC{j}) of {proc.service.name}, whose llama-server runs on host {proc.host}; "
               "it has no authentication and binds 127.0.0.1"],
    )  # fmt: skip


def _cross_host_notes(plan: Plan, proc: Process) -> list[str]:
    """What a person must do before this process can reach its devices on other hosts."""
    remote = [i for i in proc.devices if i not in proc.local(plan)]
    if not remote:
        return []
    hosts = [str(_device(plan, i).host) for i in remote]
    if proc.rpc:
        ports = [endpoint.rsplit(":", 1)[1] for endpoint in proc.rpc]
        forwards = "; ".join(f"ssh -N -L {p}:127.0.0.1:{p} {h}" for p, h in zip(ports, hosts, strict=True))
        return [f"split across hosts: start the RPC workers on {', '.join(sorted(set(hosts)))} first and forward "
                f"their ports here: {forwards}"]  # fmt: skip
    return [f"pipeline parallel across hosts {', '.join([str(proc.host), *sorted(set(hosts))])}: needs one Ray "
            "cluster over them (vLLM --distributed-executor-backend ray)"]  # fmt: skip


def _device(plan: Plan, device_id: str) -> PlannedDevice:
    try:
        return plan.device(device_id)
    except KeyError:
        raise GpumixError(
            f"plan names device {device_id}, which is not in its device list", hint="re-run `gpumix plan`"
        ) from None


def _gpu_positions(plan: Plan, devices: list[str]) -> list[int]:
    """Positions (in the process's device list) of its GPU devices."""
    return [pos for pos, device_id in enumerate(devices) if _device(plan, device_id).kind == "gpu"]


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


def process_kv(service: PlannedService, replica: int) -> tuple[int, int | None]:
    """(streams, tokens of KV) of one engine process: a replica's own share and KV, else the service's. Tokens are
    None in a plan written without them (every stream then gets its full context)."""
    if service.mode == "replica" and replica < len(service.replica_concurrency):
        tokens = service.replica_kv_cache_tokens[replica] if replica < len(service.replica_kv_cache_tokens) else None
        return max(1, service.replica_concurrency[replica]), tokens
    return max(1, service.concurrency), service.kv_cache_tokens


def _llama_kv_args(service: PlannedService, slots: int, tokens: int | None) -> list[str]:
    """-c/-np and the KV layout (engines.md §1.1; `llama-server --help` of build 0c1e570). With the plan's KV pool:
    one unified KV of `tokens` cells (-c) shared by the -np slots (--kv-unified; an explicit -np turns it off by
    default), each slot capped at the request context (--kv-unified-per-slot, "context limit per parallel slot").
    Without one (`kv_unified: false`, or an older plan): every slot keeps its own `context` cells (-c = context ×
    slots, not unified)."""
    if tokens is None or service.kv_unified is False:
        args = ["-c", str(service.context * slots), "-np", str(slots)]
        return args + (["--no-kv-unified"] if service.kv_unified is False and slots > 1 else [])
    args = ["-c", str(tokens), "-np", str(slots)]
    if slots > 1:  # one slot: the pool is its context either way
        args += ["--kv-unified", "--kv-unified-per-slot", str(service.context)]
    return args


def _llama_server(plan: Plan, proc: Process, port: int) -> tuple[list[str], list[str], int]:
    service = proc.service
    model = resolve_model_file(service.name, service.model, service.model_path, gguf_quant=service.quant)
    slots, tokens = process_kv(service, proc.replica)
    argv = [engine_binary("llama.cpp"), "-m", str(model), "-a", service.name, "--host", LOOPBACK, "--port", str(port),
            "--metrics", *_llama_kv_args(service, slots, tokens)]  # fmt: skip
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
    if proc.rpc:
        argv += ["--rpc", ",".join(proc.rpc)]
    argv += _llama_gpu_args(plan, proc)
    return argv, [str(model)], 1


def _llama_device_names(plan: Plan, proc: Process) -> list[str]:
    """-dev names of the process's GPUs in engine order. Local GPUs count only those CUDA_VISIBLE_DEVICES leaves
    visible, in its order: CUDA0, CUDA1, ...; remote ones are the RPC workers' devices RPC0, RPC1, ..."""
    local = set(proc.local(plan))
    names, cuda, rpc = [], 0, 0
    for device_id in proc.devices:
        if device_id not in local:
            names.append(f"RPC{rpc}")
            rpc += 1
        elif _device(plan, device_id).kind == "gpu":
            names.append(f"CUDA{cuda}")
            cuda += 1
    return names


def _offload_positions(plan: Plan, proc: Process) -> list[int]:
    """Positions of the devices llama.cpp offloads layers to: GPUs, and every device on another host (reached through
    its ggml-rpc-server, which serves a remote CPU's RAM as an RPC device too)."""
    local = set(proc.local(plan))
    return [pos for pos, device_id in enumerate(proc.devices)
            if _device(plan, device_id).kind == "gpu" or device_id not in local]  # fmt: skip


def _llama_gpu_args(plan: Plan, proc: Process) -> list[str]:
    service = proc.service
    positions = _offload_positions(plan, proc)
    if not positions:
        return ["-ngl", "0", "-dev", "none"]
    ngl = str(service.n_gpu_layers) if service.n_gpu_layers is not None else "all"
    args = ["-ngl", ngl, "-dev", ",".join(_llama_device_names(plan, proc))]
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


def _vllm(plan: Plan, proc: Process, port: int) -> tuple[list[str], list[str], int]:
    service, devices = proc.service, proc.devices
    gpus = _gpu_positions(plan, devices)
    # One rank per GPU; without GPUs, one rank per CPU device (vLLM's CPU build: a NUMA node or a core range each).
    ranks = len(gpus) if gpus else len(devices)
    tp, pp = (ranks, 1) if service.mode == "tensor_parallel" else (1, ranks) if ranks > 1 else (1, 1)
    model = vllm_model_arg(service)
    seqs, tokens = process_kv(service, proc.replica)
    argv = [vllm_binary(on_gpu=bool(gpus)), "serve", model, "--host", LOOPBACK, "--port", str(port),
            "--served-model-name", service.name, "--tensor-parallel-size", str(tp), "--pipeline-parallel-size", str(pp),
            "--max-model-len", str(service.context), "--max-num-seqs", str(seqs)]  # fmt: skip
    argv += _vllm_memory_args(plan, service, devices, tokens or service.context * seqs)
    argv += _vllm_quant_args(service, model)
    if service.kv_cache_dtype:
        argv += ["--kv-cache-dtype", service.kv_cache_dtype]
    if not gpus:
        # No CUDA graphs to capture on a CPU; eager mode also skips torch.compile, the slowest part of a CPU start.
        argv += ["--enforce-eager"]
    if len(proc.local(plan)) < len(devices):
        argv += ["--distributed-executor-backend", "ray"]  # stages on other hosts: one Ray cluster over them
    local = local_model_dir(service)
    return argv, [str(local)] if local else [], 2


def _vllm_memory_args(plan: Plan, service: PlannedService, devices: list[str], tokens: int) -> list[str]:
    """--kv-cache-memory-bytes: the plan's KV budget (`tokens`, this process's) as vLLM's own setting. The bytes are
    per worker (GPU, or CPU rank); vLLM gives every worker that many, then cuts every worker to the fewest blocks any
    of them got (vllm/v1/core/kv_cache_utils.py get_kv_cache_configs), so the stage holding the most KV per token
    sets the tokens: pass its bytes and the lighter stages shrink to the same token count (their planned KV). The
    bytes cover the tokens rounded up to whole blocks (128 tokens on vLLM's CPU platform, which the planner's
    16-token steps do not know) plus vLLM's null block, so vLLM holds at least what the plan says. On a CPU this is
    the only sane setting: --gpu-memory-utilization would be a share of *system* RAM (0.92 by default)."""
    mine = [b for device_id, b in zip(service.devices, service.memory_breakdown, strict=False) if device_id in devices]
    kv = [b.kv_cache_bytes for b in mine if b.kv_cache_bytes > 0]
    if kv and len(kv) == len(mine):
        block = kvmath.VLLM_BLOCK_TOKENS if _gpu_positions(plan, devices) else kvmath.VLLM_CPU_BLOCK_TOKENS
        asked_tokens = (math.ceil(tokens / block) + 1) * block
        return ["--kv-cache-memory-bytes", str(math.ceil(max(kv) * asked_tokens / tokens))]
    shares = [
        service.memory_bytes[pos] / _device(plan, device_id).memory_total_bytes
        for pos, device_id in enumerate(service.devices)
        if pos < len(service.memory_bytes) and device_id in devices and _device(plan, device_id).kind == "gpu"
    ]
    if not shares:
        return []
    return ["--gpu-memory-utilization", f"{min(0.98, max(0.05, math.ceil(max(shares) * 100) / 100)):.2f}"]


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


def _tei(plan: Plan, proc: Process, port: int) -> tuple[list[str], list[str], int]:
    service = proc.service
    repo = resolve_hf_repo(service.name, service.model, service.model_path)
    on_gpu = bool(_gpu_positions(plan, proc.devices))
    argv = [engine_binary("tei"), "--model-id", repo, "--hostname", LOOPBACK, "--port", str(port),
            "--served-model-name", service.name, "--dtype", "float16" if on_gpu else "float32"]  # fmt: skip
    return argv, [], 1


def _whisper(plan: Plan, proc: Process, port: int) -> tuple[list[str], list[str], int]:
    service = proc.service
    model = resolve_model_file(service.name, service.model, service.model_path)
    argv = [engine_binary("whisper"), "-m", str(model), "--host", LOOPBACK, "--port", str(port),
            "--inference-path", "/v1/audio/transcriptions"]  # fmt: skip
    if service.threads:
        argv += ["-t", str(service.threads)]
    if not _gpu_positions(plan, proc.devices):
        argv += ["-ng"]
    return argv, [str(model)], 1


def _sd_server(plan: Plan, proc: Process, port: int) -> tuple[list[str], list[str], int]:
    service = proc.service
    model = resolve_model_file(service.name, service.model, service.model_path)
    source = model_source(service.model)
    flag = source.sd_flag if source and not service.model_path else "-m"
    argv = [engine_binary("image"), flag, str(model), "-l", LOOPBACK, "--listen-port", str(port)]
    files = [str(model)]
    if source and not service.model_path:
        # The parts a split model needs (FLUX: VAE and text encoders) and where they run, as the catalog's
        # service_memory assumes (text encoders in RAM).
        for part_flag, name in source.sd_files:
            files.append(str(models_dir() / name))
            argv += [part_flag, files[-1]]
        argv += list(source.sd_args)
    argv += _sd_memory_args(service)
    if service.threads:
        argv += ["-t", str(service.threads)]
    return argv, files, 1


def _sd_memory_args(service: PlannedService) -> list[str]:
    """The flags of the low-memory setting the plan chose (models.yaml `low_memory`: flash attention in the
    diffusion model, tiled VAE decode, direct convolution); none at sd-server's defaults."""
    if service.memory_setting != "low":
        return []
    from gpumix.models.catalog import load_model

    try:
        spec = load_model(service.model).service_memory
    except GpumixError as exc:
        raise GpumixError(f"service '{service.name}': memory_setting low, but {exc.message}", hint=exc.hint) from None
    if spec is None or spec.low_memory is None:
        raise GpumixError(f"service '{service.name}': the plan asks for the low-memory setting, which the catalog has "
                          f"no flags for for model '{service.model}'",
                          hint="re-plan (`gpumix plan`) or set memory: default on the service")  # fmt: skip
    return list(spec.low_memory.args)


def _engine_env(plan: Plan, service: PlannedService, devices: list[str]) -> dict[str, str]:
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
