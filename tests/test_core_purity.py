"""The core (hardware, models, estimate, plan) is pure: it takes what it needs as arguments.

Checked on the source (AST), so a lazy import inside a function counts too: no environment variables, no home
directory, no probing of the machine it runs on, no imports of the stages that do I/O (CLI, launch, run, gateway,
tune, calibrate) or of their libraries (typer, rich, aiohttp, pynvml), and the layers point one way
(hardware → models → estimate → plan). The one module allowed to read this machine is
`gpumix/hardware/discovery.py` (NVML, /proc/meminfo, CPU affinity); the CLI calls it and passes `Device`s in.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "gpumix"
CORE = ("hardware", "models", "estimate", "plan")
# The I/O module of the core: this machine's GPUs, CPU and RAM. Nothing else in the core may import it.
DISCOVERY_FILE = "gpumix/hardware/discovery.py"
DISCOVERY_MODULE = "gpumix.hardware.discovery"
FORBIDDEN_IMPORTS = (
    "gpumix.cli", "gpumix.run", "gpumix.gateway", "gpumix.launch", "gpumix.tune", "gpumix.calibrate",
    "typer", "rich", "aiohttp", "pynvml",
)  # fmt: skip
# What each core layer may not import (the layers above it).
LAYERS_ABOVE = {
    "hardware": ("gpumix.models", "gpumix.estimate", "gpumix.plan"),
    "models": ("gpumix.estimate", "gpumix.plan"),
    "estimate": ("gpumix.plan",),
    "plan": (),
}
_OS_READS = {"environ", "environb", "getenv", "getenvb", "putenv", "cpu_count", "sched_getaffinity", "getloadavg"}
# (file, finding) pairs allowed, each with its reason. A finding here that no longer occurs fails the test, so the
# list only shrinks.
ALLOWED = {
    ("gpumix/models/files.py", "calls expanduser"):
        "user_path: a `~` the user wrote in a model path (plan files are not shell-expanded) means their home",
}  # fmt: skip


def _core_files() -> list[Path]:
    return sorted(p for layer in CORE for p in (PACKAGE / layer).rglob("*.py"))


def _rel(path: Path) -> str:
    return path.relative_to(PACKAGE.parent).as_posix()


def _imported_modules(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        return [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return []


def _under(module: str, prefixes: tuple[str, ...]) -> str | None:
    return next((p for p in prefixes if module == p or module.startswith(p + ".")), None)


def findings(path: Path, layer: str) -> list[tuple[int, str]]:
    """(line, finding) for each impurity in one source file of a core layer."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        for module in _imported_modules(node):
            if hit := _under(module, FORBIDDEN_IMPORTS):
                found.append((line, f"imports {hit}"))
            if hit := _under(module, LAYERS_ABOVE[layer]):
                found.append((line, f"imports {hit} (a layer above {layer})"))
            if module == DISCOVERY_MODULE:
                found.append((line, f"imports {DISCOVERY_MODULE}"))
            if module in ("os.environ", "os.getenv", "os.path.expanduser"):
                found.append((line, f"imports {module}"))
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "os" and node.attr in _OS_READS:
                found.append((line, f"reads os.{node.attr}"))
            if node.attr == "home" and isinstance(node.value, ast.Name) and node.value.id == "Path":
                found.append((line, "calls Path.home"))
            if node.attr == "expanduser":
                found.append((line, "calls expanduser"))
    return found


def test_the_core_reads_no_environment_home_or_machine_and_imports_no_io_stage() -> None:
    files = _core_files()
    assert len(files) > 20 and any(_rel(p) == DISCOVERY_FILE for p in files)
    bad, used = [], set()
    for path in files:
        if _rel(path) == DISCOVERY_FILE:
            continue
        for line, finding in findings(path, path.relative_to(PACKAGE).parts[0]):
            key = (_rel(path), finding)
            if key in ALLOWED:
                used.add(key)
            else:
                bad.append(f"{_rel(path)}:{line}: {finding}")
    assert not bad, "the core must take these as arguments:\n" + "\n".join(bad)
    stale = set(ALLOWED) - used
    assert not stale, f"no longer needed, remove from ALLOWED: {sorted(stale)}"


def test_the_scan_finds_what_it_looks_for(tmp_path) -> None:
    """The checker itself: each kind of impurity in a file of the estimate layer is reported."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import os\nimport rich\nfrom pathlib import Path\nfrom gpumix.plan import planner\n"
        "from gpumix.calibrate.files import load_calibration\nfrom gpumix.hardware import discovery\n"
        "def f():\n    import pynvml\n    return os.environ.get('X'), os.getenv('Y'), Path.home(), Path('~').expanduser()\n"
    )
    found = {finding for _, finding in findings(probe, "estimate")}
    assert found >= {
        "imports rich", "imports gpumix.plan (a layer above estimate)", "imports gpumix.calibrate", "imports pynvml",
        "reads os.environ", "reads os.getenv", "calls Path.home", "calls expanduser", f"imports {DISCOVERY_MODULE}",
    }  # fmt: skip
