"""Build, cache and locate the llama.cpp binaries gpumix drives.

llama.cpp is not packaged by Debian, so gpumix builds it from the llama.cpp source vendored in the pinned
PyPI sdist of llama-cpp-python (``vendor/llama.cpp``). The build is cached outside the repository, keyed by
the sdist version and the build options, so it happens once per machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gpumix.errors import GpumixError

# The sdist pins the llama.cpp source; bump both together and the cache key changes with them.
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
BINARIES = ("llama-server", "llama-bench", "ggml-rpc-server", "llama-batched-bench", "llama-quantize")
# On the virtual machines this project runs on, -DGGML_NATIVE=ON produced binaries that died with
# "Illegal instruction" (VISION.md, "Real parts"), so the x86-64 feature set is explicit — and taken from
# /proc/cpuinfo: a fixed -DGGML_AVX512=ON built binaries that died with SIGILL on a VM without avx512f.
_CPU_FEATURE_FLAGS = (("avx2", "GGML_AVX2"), ("fma", "GGML_FMA"), ("f16c", "GGML_F16C"), ("avx512f", "GGML_AVX512"))
CPUINFO_PATH = Path("/proc/cpuinfo")


def cpu_feature_flags(cpuinfo: Path = CPUINFO_PATH) -> tuple[str, ...]:
    """CMake switches for the instruction sets this machine's CPU has (all off where /proc/cpuinfo is absent)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        text = ""
    found = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            found.update(line.partition(":")[2].split())
    return ("-DGGML_NATIVE=OFF",) + tuple(f"-D{name}={'ON' if feature in found else 'OFF'}"
                                           for feature, name in _CPU_FEATURE_FLAGS)  # fmt: skip


_COMMON_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_RPC=ON",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    # The prebuilt web UI is fetched from the network at configure time; these machines have none.
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
)
ENV_BIN_DIR = "GPUMIX_LLAMA_CPP_BIN"
ENV_CACHE_DIR = "GPUMIX_CACHE_DIR"

Progress = Callable[[str, float | None], None]


@dataclass(frozen=True)
class BuildOptions:
    backend: str  # "cpu" | "cuda"

    @property
    def cmake_flags(self) -> tuple[str, ...]:
        flags: tuple[str, ...] = _COMMON_FLAGS + cpu_feature_flags()
        if self.backend == "cuda":
            flags += ("-DGGML_CUDA=ON",)
        return flags

    @property
    def key(self) -> str:
        digest = hashlib.sha256(" ".join(self.cmake_flags).encode()).hexdigest()[:8]
        return f"{LLAMA_CPP_PYTHON_VERSION}-{self.backend}-{digest}"


@dataclass(frozen=True)
class LlamaCppInstall:
    bin_dir: Path
    source: str  # "gpumix build <key>" or "user ($GPUMIX_LLAMA_CPP_BIN)"
    version: str

    def binary(self, name: str) -> Path:
        path = self.bin_dir / name
        if not path.is_file():
            raise GpumixError(
                f"llama.cpp binary '{name}' not found in {self.bin_dir}",
                hint="run `gpumix engines install llama.cpp`, or point "
                f"${ENV_BIN_DIR} at a folder holding {', '.join(BINARIES)}",
            )
        return path


def cache_dir() -> Path:
    return Path(os.environ.get(ENV_CACHE_DIR) or Path.home() / ".cache" / "gpumix")


def default_build_options() -> BuildOptions:
    return BuildOptions(backend="cuda" if shutil.which("nvcc") and _has_cuda_driver() else "cpu")


def _has_cuda_driver() -> bool:
    # A CUDA toolkit without a driver (as on CI machines) builds binaries that cannot run here.
    return Path("/proc/driver/nvidia/version").exists()


def build_dir(options: BuildOptions) -> Path:
    return cache_dir() / "llama.cpp" / options.key


def find_llama_cpp(options: BuildOptions | None = None) -> LlamaCppInstall | None:
    """The user's own binaries ($GPUMIX_LLAMA_CPP_BIN) win over a gpumix build."""
    user_dir = os.environ.get(ENV_BIN_DIR)
    if user_dir:
        return LlamaCppInstall(Path(user_dir), f"user (${ENV_BIN_DIR})", _binary_version(Path(user_dir)))
    options = options or default_build_options()
    manifest = build_dir(options) / "manifest.json"
    if not manifest.is_file():
        return None
    data = json.loads(manifest.read_text())
    bin_dir = Path(data["bin_dir"])
    if not all((bin_dir / name).is_file() for name in BINARIES):
        return None
    return LlamaCppInstall(bin_dir, f"gpumix build {options.key}", data.get("version", "unknown"))


def require_llama_cpp() -> LlamaCppInstall:
    install = find_llama_cpp()
    if install is None:
        raise GpumixError(
            "llama.cpp is not installed",
            hint=f"run `gpumix engines install llama.cpp` (builds once, ~15 min on 2 cores), "
            f"or set ${ENV_BIN_DIR} to a folder with your own llama-server/llama-bench",
        )
    return install


def install_llama_cpp(
    options: BuildOptions | None = None, progress: Progress | None = None, force: bool = False
) -> LlamaCppInstall:
    options = options or default_build_options()
    say = progress or (lambda _msg, _frac: None)
    if not force:
        existing = find_llama_cpp(options)
        if existing is not None and os.environ.get(ENV_BIN_DIR) is None:
            say(f"llama.cpp already built at {existing.bin_dir}", 1.0)
            return existing
    root = build_dir(options)
    root.mkdir(parents=True, exist_ok=True)
    log_path = root / "build.log"
    source = _fetch_source(root, say, log_path)
    cmake_build = root / "build"
    say("configuring (cmake)", 0.0)
    _run(["cmake", "-S", str(source), "-B", str(cmake_build), *options.cmake_flags], log_path, say, None)
    jobs = str(os.cpu_count() or 2)
    targets: list[str] = []
    for name in BINARIES:
        targets += ["--target", name]
    _run(["cmake", "--build", str(cmake_build), "-j", jobs, *targets], log_path, say, "compiling")
    bin_dir = root / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in BINARIES:
        built = cmake_build / "bin" / name
        if not built.is_file():
            raise GpumixError(f"llama.cpp build finished but {built} is missing", hint=f"see {log_path}")
        shutil.copy2(built, bin_dir / name)
    version = _binary_version(bin_dir)
    (root / "manifest.json").write_text(
        json.dumps(
            {
                "bin_dir": str(bin_dir),
                "version": version,
                "llama_cpp_python": LLAMA_CPP_PYTHON_VERSION,
                "backend": options.backend,
                "cmake_flags": list(options.cmake_flags),
            },
            indent=2,
        )
    )
    say(f"llama.cpp {version} installed in {bin_dir}", 1.0)
    return LlamaCppInstall(bin_dir, f"gpumix build {options.key}", version)


def _fetch_source(root: Path, say: Progress, log_path: Path) -> Path:
    source = root / "src" / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}" / "vendor" / "llama.cpp"
    if (source / "CMakeLists.txt").is_file():
        return source
    downloads = cache_dir() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    sdist = downloads / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"
    if not sdist.is_file():
        say(f"downloading llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION} sdist from PyPI", None)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", "-d", str(downloads)]  # fmt: skip
        _run(cmd, log_path, say, None)
    say("unpacking llama.cpp source", None)
    with tarfile.open(sdist) as tar:
        tar.extractall(root / "src", filter="data")
    return source


_PERCENT = re.compile(r"^\[\s*(\d+)%\]")


def _run(cmd: list[str], log_path: Path, say: Progress, phase: str | None) -> None:
    with log_path.open("a") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        except FileNotFoundError as exc:
            raise GpumixError(f"cannot run {cmd[0]}: not installed", hint="install cmake and a C++ compiler") from exc
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            match = _PERCENT.match(line)
            if phase and match:
                say(f"{phase}: {line[match.end():].strip()[:70]}", int(match.group(1)) / 100)
        if proc.wait() != 0:
            log.flush()
            tail = "".join(log_path.read_text().splitlines(keepends=True)[-15:])
            raise GpumixError(f"`{' '.join(cmd[:3])} ...` failed (exit {proc.returncode})", hint=f"full log: {log_path}\n{tail}")


def _binary_version(bin_dir: Path) -> str:
    server = bin_dir / "llama-server"
    if not server.is_file():
        raise GpumixError(f"{server} does not exist", hint=f"point ${ENV_BIN_DIR} at llama.cpp's bin folder")
    try:
        out = subprocess.run([str(server), "--version"], capture_output=True, text=True, timeout=30)
    except OSError as exc:
        raise GpumixError(f"{server} cannot be executed: {exc}") from exc
    text = out.stdout + out.stderr
    match = re.search(r"version:\s*(\S+.*)", text)
    if out.returncode != 0 or match is None:
        raise GpumixError(f"{server} --version failed (exit {out.returncode})", hint=text.strip()[-400:])
    return match.group(1).strip()
