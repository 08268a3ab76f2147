"""Finding Ray: the optional extra, its `ray` executable, and the pinned version."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
import sys
from pathlib import Path

from gpumix.errors import GpumixError

RAY_VERSION = "2.60.0"  # the pin in pyproject.toml's `ray` extra
INSTALL_HINT = "pip install 'gpumix[ray]'  (Ray " + RAY_VERSION + "; `make setup` has it)"


def ray_installed() -> bool:
    return importlib.util.find_spec("ray") is not None


def require_ray() -> None:
    """GpumixError with the install command when the `ray` extra is missing."""
    if not ray_installed():
        raise GpumixError("Ray is not installed: the cluster commands need it", hint=INSTALL_HINT)


def ray_version() -> str | None:
    try:
        return importlib.metadata.version("ray")
    except importlib.metadata.PackageNotFoundError:
        return None


def ray_executable() -> str:
    """The `ray` CLI of this Python environment (beside sys.executable), else the one on PATH."""
    require_ray()
    beside = Path(sys.executable).parent / "ray"
    if beside.is_file():
        return str(beside)
    found = shutil.which("ray")
    if found is None:
        raise GpumixError("the `ray` command is not on PATH although the ray package is installed", hint=INSTALL_HINT)
    return found
