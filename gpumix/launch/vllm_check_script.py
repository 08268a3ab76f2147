"""Check `vllm serve` command lines with vLLM's own code, without starting anything. Runs inside a vLLM venv:

    <vllm venv>/bin/python .../gpumix/launch/vllm_check_script.py < request.json   # prints GPUMIX_RESULT {json}

(a file of its own: it imports vLLM and nothing of gpumix). The request is {"commands": [{"name", "argv", "env",
"config_dir"}]}; for each command it reports which checks ran and what they found:

- `exact-flags`: every `-x`/`--flag` in argv is one of the parser's own option strings. vLLM's parser accepts
  abbreviations (`--gpu-mem 0.5` parses as --gpu-memory-utilization), so parsing alone would hide a misspelling.
- `parse`: vLLM's serve parser (`make_arg_parser(FlexibleArgumentParser())`) accepts argv after `vllm serve`.
- `validate`: `validate_parsed_serve_args` (vLLM's pre-start checks of the serve arguments).
- `env-names`: every VLLM_* variable set is one vLLM reads (vllm.envs.environment_variables).
- `engine-config`: `AsyncEngineArgs.from_cli_args(ns).create_engine_config()` with the model replaced by
  `config_dir` (a directory holding only config.json with the real model's shapes) and `--load-format dummy`:
  vLLM's own model/parallel/cache/scheduler/quantization validation — TP must divide the attention heads, a
  checkpoint's quantization must match `--quantization`, max-model-len must fit the model, and so on.
- `pp-partition`: VLLM_PP_LAYER_PARTITION through vLLM's `get_pp_indices` for every pipeline rank.
- `cpu-bind`: VLLM_CPU_OMP_THREADS_BIND has one core list per local rank, each parsed by vLLM's own parser.

This runs on whatever platform the venv is built for. On the CPU build, create_engine_config validates a GPU
command's configuration with the CPU platform's hooks: what it cannot check (GPU count vs TP×PP, CUDA compute
capability a quantization kernel needs, memory profiling, attention-backend choice) is listed under "not_checked".
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

NOT_CHECKED_ON_CPU = [
    "GPUs present vs tensor_parallel_size x pipeline_parallel_size (the CPU platform has no device count)",
    "CUDA compute capability the quantization kernels need (e.g. FP8 W8A8 on sm_89+)",
    "memory profiling: whether weights + activations + the KV budget fit the GPU (the plan's memory check covers it)",
    "CUDA graph capture, attention backend and NCCL set-up (happen at start-up only)",
]
NOT_CHECKED_WITHOUT_RAY = (
    "the Ray executor (--distributed-executor-backend ray): Ray is not installed in this vLLM venv, so the engine "
    "configuration was built with the mp executor"
)


def main() -> int:
    request = json.load(sys.stdin)
    with contextlib.redirect_stdout(io.StringIO()):  # vLLM logs to stdout on import; keep ours clean
        results = check_all(request["commands"])
    # One marked line: anything vLLM still prints around it is ignored by the reader.
    print("GPUMIX_RESULT " + json.dumps({"results": results, "platform": _platform()}), flush=True)
    return 0


def _platform() -> dict[str, Any]:
    import importlib.metadata

    from vllm.platforms import current_platform

    return {"device_type": current_platform.device_type, "vllm_version": importlib.metadata.version("vllm")}


def check_all(commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))
    return [check_one(parser, command) for command in commands]


def check_one(parser: Any, command: dict[str, Any]) -> dict[str, Any]:  # parser: vLLM's FlexibleArgumentParser
    result: dict[str, Any] = {"name": command["name"], "errors": [], "checked": [], "not_checked": [], "config": {}}
    argv: list[str] = command["argv"]
    env: dict[str, str] = command.get("env", {})
    if len(argv) < 3 or Path(argv[0]).name != "vllm" or argv[1] != "serve":
        result["errors"].append(f"not a `vllm serve MODEL ...` command: {argv[:3]}")
        return result
    args = argv[2:]
    unknown = [tok.split("=", 1)[0] for tok in args if _is_flag(tok) and tok.split("=", 1)[0] not in parser._option_string_actions]
    result["checked"].append("exact-flags")
    if unknown:
        result["errors"].append(f"not exact vLLM option strings (unknown, or abbreviations vLLM would expand): {unknown}")
    ns = _parse(parser, args, result)
    if ns is None:
        return result
    result["model"] = ns.model_tag
    try:
        from vllm.entrypoints.launchers.cli_args import validate_parsed_serve_args

        validate_parsed_serve_args(ns)
        result["checked"].append("validate")
    except Exception as exc:  # noqa: BLE001 - vLLM raises TypeError/ValueError/...; report whatever it is
        result["errors"].append(f"validate_parsed_serve_args: {type(exc).__name__}: {exc}")
    _check_env_names(env, result)
    config_dir = command.get("config_dir")
    if config_dir:
        _engine_config(ns, config_dir, env, result)
    return result


def _is_flag(token: str) -> bool:
    if not token.startswith("-") or token == "-":
        return False
    try:
        float(token)
        return False  # a negative number is a value
    except ValueError:
        return True


def _parse(parser: Any, args: list[str], result: dict[str, Any]) -> Any:
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            ns = parser.parse_args(args)
    except SystemExit:
        result["errors"].append("vLLM's parser refused the arguments: " + stderr.getvalue().strip().splitlines()[-1:][0]
                                if stderr.getvalue().strip() else "vLLM's parser refused the arguments")  # fmt: skip
        return None
    result["checked"].append("parse")
    ns.model = ns.model_tag
    return ns


def _check_env_names(env: dict[str, str], result: dict[str, Any]) -> None:
    import vllm.envs as envs

    known = set(envs.environment_variables)
    unknown = sorted(k for k in env if k.startswith("VLLM_") and k not in known)
    result["checked"].append("env-names")
    if unknown:
        result["errors"].append(f"environment variables vLLM does not read: {unknown}")


@contextlib.contextmanager
def _env(values: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _engine_config(ns: Any, config_dir: str, env: dict[str, str], result: dict[str, Any]) -> None:
    from vllm.engine.arg_utils import AsyncEngineArgs

    served_as = ns.model
    ns.model = ns.model_tag = config_dir
    ns.load_format = "dummy"
    ns.skip_tokenizer_init = True  # the config-only directory has no tokenizer
    if ns.served_model_name is None:
        ns.served_model_name = [served_as]
    vllm_env = {k: v for k, v in env.items() if k.startswith("VLLM_")}
    executor = getattr(ns, "distributed_executor_backend", None)
    if executor == "ray" and importlib.util.find_spec("ray") is None:
        # vLLM imports Ray to build a configuration with the Ray executor (a command for several hosts), and the CPU
        # build's venv has no Ray (the CUDA wheel brings it). Everything else is checked with the mp executor; the
        # result says so.
        ns.distributed_executor_backend = "mp"
        result["not_checked"].append(NOT_CHECKED_WITHOUT_RAY)
    try:
        with _env(vllm_env):
            config = AsyncEngineArgs.from_cli_args(ns).create_engine_config()
    except Exception as exc:  # noqa: BLE001
        result["errors"].append(f"create_engine_config: {type(exc).__name__}: {_first_lines(exc)}")
        return
    result["checked"].append("engine-config")
    from vllm.platforms import current_platform

    if current_platform.device_type == "cpu":
        result["not_checked"] += NOT_CHECKED_ON_CPU
    par, model, cache, sched = config.parallel_config, config.model_config, config.cache_config, config.scheduler_config
    result["config"] = {
        "tensor_parallel_size": par.tensor_parallel_size,
        "pipeline_parallel_size": par.pipeline_parallel_size,
        "world_size": par.world_size,
        "distributed_executor_backend": executor,  # as the command asks (see not_checked when Ray is absent)
        "quantization": model.quantization,
        "dtype": str(model.dtype).removeprefix("torch."),
        "max_model_len": model.max_model_len,
        "max_num_seqs": sched.max_num_seqs,
        "kv_cache_memory_bytes": cache.kv_cache_memory_bytes,
        "cache_dtype": str(cache.cache_dtype),
        "block_size": cache.block_size,
        "enforce_eager": model.enforce_eager,
        "served_model_name": model.served_model_name,
        "num_hidden_layers": model.hf_text_config.num_hidden_layers,
        "num_attention_heads": model.hf_text_config.num_attention_heads,
    }
    with _env(vllm_env):
        _check_pp_partition(config, result)
        _check_cpu_bind(config, env, result)


def _check_pp_partition(config: Any, result: dict[str, Any]) -> None:
    if "VLLM_PP_LAYER_PARTITION" not in os.environ:
        return
    from vllm.distributed.utils import get_pp_indices

    pp = config.parallel_config.pipeline_parallel_size
    layers = config.model_config.hf_text_config.num_hidden_layers
    try:
        result["config"]["pp_layer_ranges"] = [list(get_pp_indices(layers, rank, pp)) for rank in range(pp)]
        result["checked"].append("pp-partition")
    except Exception as exc:  # noqa: BLE001
        result["errors"].append(f"VLLM_PP_LAYER_PARTITION: {type(exc).__name__}: {_first_lines(exc)}")


def _check_cpu_bind(config: Any, env: dict[str, str], result: dict[str, Any]) -> None:
    mask = env.get("VLLM_CPU_OMP_THREADS_BIND")
    if mask is None or mask in ("auto", "nobind"):
        return
    from vllm.utils.cpu_resource_utils import parse_id_list

    lists = mask.split("|")
    ranks = config.parallel_config.tensor_parallel_size * config.parallel_config.pipeline_parallel_size
    if len(lists) != ranks:
        result["errors"].append(f"VLLM_CPU_OMP_THREADS_BIND has {len(lists)} core lists for {ranks} local ranks")
        return
    try:
        result["config"]["cpu_cores_per_rank"] = [sorted(parse_id_list(item)) for item in lists]
        result["checked"].append("cpu-bind")
    except Exception as exc:  # noqa: BLE001
        result["errors"].append(f"VLLM_CPU_OMP_THREADS_BIND: {type(exc).__name__}: {exc}")


def _first_lines(exc: BaseException, n: int = 3) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return " ".join(lines[:n]) if lines else "".join(traceback.format_exception_only(exc)).strip()


if __name__ == "__main__":
    sys.exit(main())
