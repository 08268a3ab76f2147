"""Every vLLM command gpumix writes — launch (render_plan) and the compose, systemd and commands exports — checked by
vLLM 0.32 itself (gpumix/launch/vllm_check_script.py in gpumix's vLLM venv): exact option strings, vLLM's parser,
validate_parsed_serve_args, and create_engine_config against a config-only directory of the catalog model
(`--load-format dummy`), for the examples' FP8, TP, PP, AWQ, replica and CPU plans.

The venv is vLLM's CPU build, so create_engine_config runs with the CPU platform's hooks: each result lists what
that could not check for a GPU command (GPU count, CUDA capability, memory profiling) under `not_checked`.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable
from pathlib import Path
from typing import TypeVar

import pytest
import yaml

from gpumix.launch.commands import process_kv, render_plan
from gpumix.launch.compose import CONTAINER_MODELS_DIR
from gpumix.launch.export import render_export
from gpumix.launch.spec import LaunchSpec
from gpumix.launch.vllm_check import VllmCheck, VllmCommand, check_vllm_commands, write_config_dir
from gpumix.launch.vllm_install import find_vllm
from gpumix.launch.vllm_models import is_quantized_checkpoint, vllm_model_arg
from gpumix.models.catalog import load_model
from gpumix.plan.result import Plan

pytestmark = pytest.mark.vllm
T = TypeVar("T")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DATA = Path(__file__).parent / "data"
CPU_ONLY_CHECKS = {"exact-flags", "parse", "validate", "env-names", "engine-config"}
TWO_HOSTS_MULTINODE = """devices:
  - {gpu: RTX 4090, host: box-a}
  - {gpu: RTX 4090, host: box-b}
services:
  - {name: chat, model: qwen2.5-32b, quant: fp8, engine: vllm, context: 4096, allow_multinode: true}
"""


def _plan_yaml(text: str, tmp: Path, name: str) -> Plan:
    from gpumix.plan.planner import plan_file

    path = tmp / f"{name}.yaml"
    path.write_text(text)
    plan = plan_file(path)
    assert plan.feasible, (name, plan.reasons)
    return plan


def _scenarios(tmp: Path) -> dict[str, Plan]:
    """The examples with vLLM services, plus the pipeline-parallel variant of the 2x4090 32B plan."""
    plans = {name: _plan_yaml((EXAMPLES / f"{name}.yaml").read_text(), tmp, name)
             for name in ("hybrid-box", "2x4090-32b-fp8", "2x4090-70b-awq", "2x4090-8b-vllm-replicas", "cpu-vllm",
                          "cpu-vllm-parallel")}  # fmt: skip
    # PP at 4096 tokens: its stages are not balanced by memory, so 8192 tokens x 4 does not fit the lighter card.
    pp = (EXAMPLES / "2x4090-32b-fp8.yaml").read_text().replace("engine: vllm", "engine: vllm\n    mode: pipeline_parallel")
    pp = pp.replace("context: 8192", "context: 4096")
    plans["2x4090-32b-fp8-pp"] = _plan_yaml(pp, tmp, "2x4090-32b-fp8-pp")
    # Pipeline parallel across two hosts (one 4090 each): the command runs on the first host with the Ray executor.
    plans["two-hosts-32b-fp8-pp"] = _plan_yaml(TWO_HOSTS_MULTINODE, tmp, "two-hosts-32b-fp8-pp")
    plans["hybrid-box.plan.json"] = Plan.model_validate_json((DATA / "hybrid-box.plan.json").read_text())
    return plans


# ---- the command lines of each export, read back the way their consumer reads them ------------------------------


def _from_script(text: str) -> dict[str, tuple[list[str], dict[str, str]]]:
    """gpumix-commands.sh: `# name: engine on url`, its `# note` lines, then `env K=V ... argv... >log 2>&1 &`,
    read by bash's rules."""
    out = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        match = re.match(r"# (\S+): vllm on ", line)
        if not match:
            continue
        command = next(ln for ln in lines[i + 1:] if not ln.startswith("#"))  # after the process's notes, if any
        words = shlex.split(command.split(' >"$LOG_DIR"', 1)[0])
        assert words[0] == "env"
        assignments = [w for w in words[1:] if re.match(r"^[A-Z_][A-Z0-9_]*=", w)]
        env = dict(w.split("=", 1) for w in assignments)
        argv = words[1 + len(assignments):]
        out[match.group(1)] = (argv, env)
    return out


def _systemd_words(value: str) -> list[str]:
    """ExecStart/Environment words as systemd reads gpumix's quoting (C escapes; %% and $$ are literal % and $)."""
    words = re.findall(r'"((?:[^"\\]|\\.)*)"', value)
    return [re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), w).replace("%%", "%").replace("$$", "$")
            for w in words]  # fmt: skip


def _from_systemd(files: dict[str, str]) -> dict[str, tuple[list[str], dict[str, str]]]:
    out = {}
    for path, text in files.items():
        if "gpumix vllm service" not in text:
            continue
        name = path.rsplit("/", 1)[-1]
        argv = _systemd_words(next(ln for ln in text.splitlines() if ln.startswith("ExecStart="))[len("ExecStart="):])
        env = dict(_systemd_words(ln[len("Environment="):])[0].split("=", 1)
                   for ln in text.splitlines() if ln.startswith("Environment="))  # fmt: skip
        out[name.removeprefix("gpumix-").removesuffix(".service")] = (argv, env)
    return out


def _from_compose(text: str) -> dict[str, tuple[list[str], dict[str, str], dict[str, str]]]:
    """entrypoint + command as the container runs them, environment, and the host paths behind /models mounts."""
    out = {}
    for name, svc in yaml.safe_load(text)["services"].items():
        if svc.get("entrypoint", [None])[0] != "vllm":
            continue
        mounts = {v.split(":")[1]: v.split(":")[0] for v in svc["volumes"] if v.split(":")[1].startswith(CONTAINER_MODELS_DIR)}
        out[name] = ([*svc["entrypoint"], *svc["command"]], {k: str(v) for k, v in svc["environment"].items()}, mounts)
    return out


def _export_files(plan: Plan, kind: str, filename: str) -> list[str]:
    """The export's file of that name: one, or one per host (HOST/filename) on a plan over several hosts."""
    files = render_export(plan, kind)
    return [text for path, text in files.items() if path == filename or path.endswith(f"/{filename}")]


def _merged(parts: Iterable[dict[str, T]]) -> dict[str, T]:
    out: dict[str, T] = {}
    for part in parts:
        assert not set(out) & set(part)
        out |= part
    return out


# ---- one vLLM process checks every command of every scenario ------------------------------------------------------


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    install = find_vllm("cpu")
    if install is None:
        pytest.skip("gpumix's vLLM venv is not installed (`make vllm` or `gpumix engines install vllm`; `make test` does it)")
    tmp = tmp_path_factory.mktemp("vllm-check")
    plans = _scenarios(tmp)
    commands: list[VllmCommand] = []
    expected: dict[str, tuple[Plan, LaunchSpec, str]] = {}
    for scenario, plan in plans.items():
        specs = [s for s in render_plan(plan) if s.engine == "vllm"]
        exports = {
            "script": _merged(_from_script(text) for text in _export_files(plan, "commands", "gpumix-commands.sh")),
            "systemd": _from_systemd(render_export(plan, "systemd")),
        }
        compose = _merged(_from_compose(text) for text in _export_files(plan, "compose", "compose.yaml"))
        for spec in specs:
            service = plan.service(spec.service)
            model_arg = vllm_model_arg(service)
            config_dir = write_config_dir(load_model(service.model), service.quant,
                                          is_quantized_checkpoint(service, model_arg), tmp / "cfg" / f"{scenario}-{spec.name}")  # fmt: skip
            variants = {"launch": (spec.argv, spec.env)}
            variants |= {kind: found[spec.name] for kind, found in exports.items()}
            argv, env, mounts = compose[spec.name]
            assert all(mounts.get(a, a) == b for a, b in zip(argv[2:], spec.argv[2:], strict=True)), (argv, spec.argv)
            variants["compose"] = (argv, env)
            for kind, (argv, env) in variants.items():
                name = f"{scenario}/{spec.name}/{kind}"
                commands.append(VllmCommand(name, list(argv), dict(env), str(config_dir)))
                expected[name] = (plan, spec, model_arg)
    commands += _broken_commands(tmp)
    results = {r.name: r for r in check_vllm_commands(commands, install)}
    assert set(results) == {c.name for c in commands}
    return results, expected


def _broken_commands(tmp: Path) -> list[VllmCommand]:
    """Commands vLLM must refuse: each proves one check can fail."""
    cfg = str(write_config_dir(load_model("llama-3.1-8b"), "bf16", False, tmp / "cfg" / "broken-8b"))
    base = ["vllm", "serve", "meta-llama/Llama-3.1-8B-Instruct", "--host", "127.0.0.1", "--port", "8001"]
    return [
        VllmCommand("broken/abbreviated-flag", [*base, "--gpu-mem", "0.5"], {}, cfg),
        VllmCommand("broken/unknown-flag", [*base, "--kv-cache-bytes", "1G"], {}, cfg),
        VllmCommand("broken/tp3-of-32-heads", [*base, "--tensor-parallel-size", "3"], {}, cfg),
        VllmCommand("broken/pp-partition", [*base, "--pipeline-parallel-size", "2"], {"VLLM_PP_LAYER_PARTITION": "20,13"}, cfg),
        VllmCommand("broken/env-name", base, {"VLLM_PP_LAYER_PARTITON": "16,16"}, cfg),
        VllmCommand("broken/bind-lists", [*base, "--tensor-parallel-size", "2"], {"VLLM_CPU_OMP_THREADS_BIND": "0"}, cfg),
        VllmCommand("broken/context", [*base, "--max-model-len", "200000"], {}, cfg),
        VllmCommand("broken/awq-flag-on-bf16", [*base, "--quantization", "awq"], {}, cfg),
    ]


def _mine(results: dict[str, VllmCheck]) -> dict[str, VllmCheck]:
    return {name: r for name, r in results.items() if not name.startswith("broken/")}


def test_every_vllm_command_of_every_export_passes_vllms_own_checks(checked):
    results, _ = checked
    mine = _mine(results)
    # 9 scenarios; 13 vLLM processes; 4 forms each (launch, script, systemd, compose).
    assert len(mine) >= 40
    failures = {name: r.errors for name, r in mine.items() if not r.ok}
    assert failures == {}
    for name, r in mine.items():
        assert set(r.checked) >= CPU_ONLY_CHECKS, (name, r.checked)
        assert r.not_checked, name  # the CPU build says what it could not check for these commands


def test_vllm_resolves_the_configuration_the_plan_asked_for(checked):
    results, expected = checked
    for name, r in _mine(results).items():
        plan, spec, model_arg = expected[name]
        service = plan.service(spec.service)
        cfg = r.config
        ranks = len(service.devices) if service.mode in ("tensor_parallel", "pipeline_parallel") else 1
        tp, pp = (ranks, 1) if service.mode == "tensor_parallel" else (1, ranks)
        assert (cfg["tensor_parallel_size"], cfg["pipeline_parallel_size"]) == (tp, pp), name
        seqs, tokens = process_kv(service, spec.replica)  # a replica's own share of the streams and its KV budget
        if tokens is None:  # a plan.json written before KV budgets: every stream at full context
            assert name.startswith("hybrid-box.plan.json/"), name
            tokens = service.context * seqs
        assert cfg["max_model_len"] == service.context and cfg["max_num_seqs"] == seqs, name
        assert cfg["served_model_name"] == spec.service, name
        if service.memory_breakdown:  # the process's KV bytes for its tokens, rounded up to blocks + vLLM's null block
            block = 16 if spec.uses_gpu else 128
            mine = [b for d, b in zip(service.devices, service.memory_breakdown, strict=True) if d in spec.devices]
            kv = max(b.kv_cache_bytes for b in mine)
            assert cfg["kv_cache_memory_bytes"] == -(-kv * ((-(-tokens // block) + 1) * block) // tokens), name
        else:
            assert cfg["kv_cache_memory_bytes"] is None, name
        quant = service.quant.lower()
        want_quant = {"awq-int4": "awq", "gptq-int4": "gptq"}.get(quant, "fp8" if quant == "fp8" else None)
        assert cfg["quantization"] == want_quant, (name, cfg["quantization"])
        on_cpu = not spec.uses_gpu
        assert cfg["enforce_eager"] is on_cpu, name
        if service.mode == "pipeline_parallel":
            starts = [sum(service.layers[:i]) for i in range(len(service.layers))]
            assert cfg["pp_layer_ranges"] == [[s, s + n] for s, n in zip(starts, service.layers, strict=True)], name
        if on_cpu:
            assert cfg.get("cpu_cores_per_rank") == [[r] for r in range(tp * pp)], (name, cfg, spec.env)
        across_hosts = len({plan.device(d).host for d in spec.devices}) > 1
        assert cfg["distributed_executor_backend"] == ("ray" if across_hosts else None), name
        if across_hosts:
            assert any("Ray executor" in line for line in r.not_checked), name  # the CPU venv has no Ray: said so
    # The scenarios cover what the issue names.
    modes = {(expected[n][0].service(expected[n][1].service).mode, expected[n][0].service(expected[n][1].service).quant)
             for n in _mine(results)}  # fmt: skip
    assert {("tensor_parallel", "fp8"), ("pipeline_parallel", "fp8"), ("tensor_parallel", "awq-int4"),
            ("replica", "fp8"), ("single", "fp8"), ("single", "bf16"), ("pipeline_parallel", "bf16"),
            ("tensor_parallel", "bf16")} <= modes  # fmt: skip
    assert any(name.startswith("two-hosts-32b-fp8-pp/") for name in _mine(results))


def test_the_exports_write_the_same_vllm_command_as_the_launch(checked):
    results, _ = checked
    by_process: dict[str, dict[str, VllmCheck]] = {}
    for name, r in _mine(results).items():
        scenario, process, kind = name.split("/")
        by_process.setdefault(f"{scenario}/{process}", {})[kind] = r
    for process, kinds in by_process.items():
        assert set(kinds) == {"launch", "script", "systemd", "compose"}, process
        configs = {kind: r.config for kind, r in kinds.items()}
        assert all(c == configs["launch"] for c in configs.values()), process


def test_gpu_exports_name_plain_vllm_serve_and_the_pinned_image(checked):
    _, expected = checked
    for name, (_plan, spec, _model) in expected.items():
        if spec.uses_gpu:
            assert spec.argv[:2] == ["vllm", "serve"], name  # not this machine's CPU venv
            assert spec.image == "vllm/vllm-openai:v0.32.0", name


def test_vllm_refuses_each_broken_command_for_the_right_reason(checked):
    results, _ = checked
    reasons = {
        "broken/abbreviated-flag": "not exact vLLM option strings",
        "broken/unknown-flag": "not exact vLLM option strings",
        "broken/tp3-of-32-heads": "must be divisible by tensor parallel size (3)",
        "broken/pp-partition": "does not match num_hidden_layers=32",
        "broken/env-name": "VLLM_PP_LAYER_PARTITON",
        "broken/bind-lists": "1 core lists for 2 local ranks",
        "broken/context": "greater than the derived max_model_len",
        "broken/awq-flag-on-bf16": "awq",
    }
    for name, reason in reasons.items():
        assert any(reason in e for e in results[name].errors), (name, results[name].errors)


def test_litellm_routes_to_the_name_vllm_serves(checked):
    _, expected = checked
    seen = set()
    for plan, _spec, _model in expected.values():
        if id(plan) in seen:
            continue
        seen.add(id(plan))
        config = yaml.safe_load(render_export(plan, "litellm")["litellm.yaml"])
        for entry in config["model_list"]:
            if plan.service(entry["model_name"]).engine == "vllm":
                # LiteLLM's openai/<name> must be the --served-model-name vLLM answers to.
                assert entry["litellm_params"]["model"] == f"openai/{entry['model_name']}"
                process = next(s for s in render_plan(plan) if s.name == entry["model_info"]["id"])
                assert process.argv[process.argv.index("--served-model-name") + 1] == entry["model_name"]
