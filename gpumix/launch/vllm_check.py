"""Check the vLLM commands gpumix writes with vLLM itself: its parser, its argument checks and its engine config.

`check_vllm_commands` sends command lines to vllm_check_script.py running in gpumix's vLLM venv (see that file for
the list of checks). For the deeper check a model is needed without its weights: `write_config_dir` writes a
directory holding only the config.json of a catalog model (shapes from gpumix/models/data/models.yaml, plus the
quantization_config a checkpoint of that format carries), which vLLM loads with `--load-format dummy`.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpumix.errors import GpumixError
from gpumix.launch.vllm_install import VllmInstall, require_vllm
from gpumix.models.spec import ModelSpec

CHECK_SCRIPT = Path(__file__).with_name("vllm_check_script.py")

# Catalog architecture → (HF architectures[0], model_type): the classes vLLM's registry resolves.
_HF_ARCH = {
    "llama": ("LlamaForCausalLM", "llama"),
    "qwen2": ("Qwen2ForCausalLM", "qwen2"),
    "mixtral": ("MixtralForCausalLM", "mixtral"),
    "gemma3": ("Gemma3ForCausalLM", "gemma3_text"),
}
# What a checkpoint of each weight format carries in config.json (AutoAWQ GEMM, AutoGPTQ, vLLM/llm-compressor FP8).
_CHECKPOINT_QUANT: dict[str, dict[str, Any]] = {
    "awq-int4": {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"},
    "gptq-int4": {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": True},
    "fp8": {"quant_method": "fp8", "activation_scheme": "dynamic"},
}


@dataclass(frozen=True)
class VllmCommand:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    config_dir: str | None = None  # replaces the model for create_engine_config; None = parse and validate only


@dataclass(frozen=True)
class VllmCheck:
    name: str
    model: str | None
    errors: list[str]
    checked: list[str]
    not_checked: list[str]
    config: dict[str, Any]

    @property
    def ok(self) -> bool:
        return not self.errors


def config_json(model: ModelSpec, quant: str, checkpoint_quantized: bool) -> dict[str, Any]:
    """config.json of `model` as a checkpoint in format `quant` (pure)."""
    if model.kind != "llm" or model.architecture not in _HF_ARCH:
        raise GpumixError(f"no config.json template for {model.name} ({model.kind}, architecture {model.architecture})",
                          hint=f"known architectures: {', '.join(sorted(_HF_ARCH))}")  # fmt: skip
    arch, model_type = _HF_ARCH[model.architecture]
    int4 = quant in ("awq-int4", "gptq-int4")
    config: dict = {
        "architectures": [arch],
        "model_type": model_type,
        "hidden_size": model.hidden_size,
        "intermediate_size": model.intermediate_size,
        "num_hidden_layers": model.n_layers,
        "num_attention_heads": model.n_heads,
        "num_key_value_heads": model.n_kv_heads,
        "head_dim": model.head_dim,
        "vocab_size": model.vocab_size,
        "max_position_embeddings": model.context_length,
        "tie_word_embeddings": model.tied_embeddings,
        "hidden_act": "gelu_pytorch_tanh" if model.architecture == "gemma3" else "silu",
        "rms_norm_eps": 1e-6 if model.architecture in ("qwen2", "gemma3") else 1e-5,
        # AWQ/GPTQ kernels compute in float16; the checkpoints say so.
        "torch_dtype": "float16" if int4 or quant in ("f16", "fp16") else "bfloat16",
    }
    if model.architecture == "mixtral":
        config |= {"num_local_experts": model.n_experts, "num_experts_per_tok": model.n_experts_active}
    if model.architecture == "gemma3":
        config |= {
            "sliding_window": model.sliding_window,
            "layer_types": ["sliding_attention" if swa else "full_attention" for swa in model.swa_layers]
            or ["full_attention"] * model.n_layers,
            "query_pre_attn_scalar": model.head_dim,
        }
    if checkpoint_quantized and quant in _CHECKPOINT_QUANT:
        config["quantization_config"] = dict(_CHECKPOINT_QUANT[quant])
    return config


def write_config_dir(model: ModelSpec, quant: str, checkpoint_quantized: bool, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(config_json(model, quant, checkpoint_quantized), indent=2) + "\n")
    return out_dir


def check_vllm_commands(commands: list[VllmCommand], install: VllmInstall | None = None, timeout_s: float = 600) -> list[VllmCheck]:
    """One vLLM process checks them all (importing vLLM takes 15-30 s; each check then takes milliseconds)."""
    install = install or require_vllm("cpu")
    request = {"commands": [c.__dict__ for c in commands]}
    try:
        out = subprocess.run([str(install.python), "-I", str(CHECK_SCRIPT)], input=json.dumps(request), capture_output=True,
                             text=True, timeout=timeout_s, env=_check_env())  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise GpumixError(f"vLLM's checker did not finish in {timeout_s:g} s") from exc
    line = next((ln for ln in reversed(out.stdout.splitlines()) if ln.startswith("GPUMIX_RESULT ")), None)
    if out.returncode != 0 or line is None:
        raise GpumixError(f"vLLM's checker failed (exit {out.returncode})", hint=(out.stderr or out.stdout)[-2000:])
    data = json.loads(line.removeprefix("GPUMIX_RESULT "))
    return [VllmCheck(r["name"], r.get("model"), r["errors"], r["checked"], r["not_checked"], r["config"]) for r in data["results"]]


def _check_env() -> dict[str, str]:
    import os

    # Offline (config-only directories; nothing to fetch) and quiet; no usage report from a check. The commands are
    # checked with their own environment: an exported VLLM_CPU_KVCACHE_SPACE (which replaces --kv-cache-memory-bytes
    # on the CPU build, and which `gpumix up` refuses) is not theirs.
    inherited = {k: v for k, v in os.environ.items() if k != "VLLM_CPU_KVCACHE_SPACE"}
    return inherited | {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "VLLM_LOGGING_LEVEL": "WARNING"}
