"""Read a Hugging Face config.json (+ safetensors headers beside it) into a ModelSpec.

Supported model_type values: llama, mistral, mixtral, qwen2, gemma3 (incl. the multimodal wrapper's
`text_config`), gemma3_text, gemma2, gpt_oss; others are read with the llama layout. Parameters are counted from
the shapes (gpumix.models.params). When safetensors files sit beside the config, only their headers are read
(8-byte little-endian length + JSON, per https://github.com/huggingface/safetensors#format) to get every
tensor's exact bytes per layer.
"""

from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path
from typing import Any

from gpumix.errors import GpumixError
from gpumix.models.gguf_file import MAX_LAYERS, expand_swa_pattern
from gpumix.models.params import Shapes, count_params
from gpumix.models.spec import ModelSpec

MAX_CONFIG_BYTES = 16 * 2**20  # a config.json is a few KB
MAX_SAFETENSORS_HEADER_BYTES = 100 * 2**20  # the format's own limit (safetensors rejects larger headers)

# HF model_type -> gpumix architecture name (llama.cpp's, so GGUF and config agree)
ARCHITECTURES = {
    "llama": "llama",
    "mistral": "llama",  # llama.cpp converts Mistral 7B to arch llama
    "mixtral": "mixtral",
    "qwen2": "qwen2",
    "gemma3": "gemma3",
    "gemma3_text": "gemma3",
    "gemma2": "gemma2",
    "gpt_oss": "gpt-oss",
}
# tie_word_embeddings when the config omits it: each transformers config class's default
TIED_DEFAULT = {"gemma3": True, "gemma2": True}
# sliding_window_pattern defaults of transformers' Gemma3TextConfig (6) and Gemma2 (alternating)
SWA_PERIOD_DEFAULT = {"gemma3": 6, "gemma2": 2}
QUANT_METHODS = {"awq": "awq-int4", "gptq": "gptq-int4", "fp8": "fp8", "mxfp4": "mxfp4"}
DTYPES = {"bfloat16": "bf16", "float16": "f16", "float32": "f32"}
_LAYER_NAME = re.compile(r"(?:^|\.)layers\.(\d+)\.")
_NON_TEXT = ("vision", "visual", "multi_modal_projector", "audio")


def _config_path(path: Path) -> Path:
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise GpumixError(f"config.json not found: {path}", hint="pass a config.json or a Hugging Face model folder")
    return path


def _load_json(path: Path, limit: int = MAX_CONFIG_BYTES) -> dict[str, Any]:
    try:
        if path.stat().st_size > limit:
            raise GpumixError(f"{path} is {path.stat().st_size} bytes, too large for a config file")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GpumixError(f"malformed JSON in {path}: {exc}") from None
    except OSError as exc:
        raise GpumixError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not isinstance(data, dict):
        raise GpumixError(f"malformed config {path}: top level is {type(data).__name__}, expected an object")
    return data


def _text_config(data: dict[str, Any]) -> dict[str, Any]:
    """Multimodal wrappers (Gemma 3 4B+) nest the decoder's shapes in text_config."""
    text = data.get("text_config")
    if isinstance(text, dict):
        return {**{k: v for k, v in data.items() if k != "text_config"}, **text, "model_type": data.get("model_type")}
    return data


class _Fields:
    def __init__(self, cfg: dict[str, Any], path: Path) -> None:
        self.cfg = cfg
        self.path = path

    def integer(self, *keys: str, default: int | None = None) -> int:
        for key in keys:
            value = self.cfg.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise GpumixError(f"malformed config {self.path}: {key} = {value!r} is not a non-negative integer")
            return value
        if default is None:
            raise GpumixError(f"malformed config {self.path}: missing {keys[0]}", hint="is this a decoder LLM config.json?")
        return default


def _swa_layers(cfg: dict[str, Any], arch: str, n_layers: int, window: int) -> tuple[bool, ...]:
    layer_types = cfg.get("layer_types")
    if isinstance(layer_types, list) and len(layer_types) == n_layers:
        return tuple(t == "sliding_attention" for t in layer_types)
    if not window:
        return ()
    if arch in SWA_PERIOD_DEFAULT:
        period = cfg.get("sliding_window_pattern", SWA_PERIOD_DEFAULT[arch])
        if isinstance(period, int) and not isinstance(period, bool) and period >= 0:
            return expand_swa_pattern(n_layers, period)
    return ()  # Mistral's sliding_window: llama.cpp attends the full context (see models.yaml)


def _sliding_window(cfg: dict[str, Any]) -> int:
    window = cfg.get("sliding_window")
    if cfg.get("use_sliding_window") is False:  # Qwen2 ships a window but disables it
        return 0
    return window if isinstance(window, int) and not isinstance(window, bool) and window > 0 else 0


def _file_quant(cfg: dict[str, Any]) -> str | None:
    qcfg = cfg.get("quantization_config")
    if isinstance(qcfg, dict):
        method = str(qcfg.get("quant_method", "")).lower()
        return QUANT_METHODS.get(method, method or None)
    dtype = cfg.get("torch_dtype") or cfg.get("dtype")
    return DTYPES.get(str(dtype)) if dtype else None


# ---------------------------------------------------------------------------------------------------------------
# safetensors headers


def _safetensors_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _load_json(index, limit=MAX_SAFETENSORS_HEADER_BYTES).get("weight_map")
        if not isinstance(weight_map, dict):
            raise GpumixError(f"malformed {index}: no weight_map object")
        files = sorted({folder / str(name) for name in weight_map.values()})
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise GpumixError(f"safetensors file(s) listed in {index} are missing: {', '.join(missing[:3])}")
        return files
    return sorted(folder.glob("*.safetensors"))


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of one .safetensors file (reads 8 + header-length bytes, never the tensors)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise GpumixError(f"malformed safetensors {path}: shorter than its 8-byte header length")
            (length,) = struct.unpack("<Q", prefix)
            if length > min(MAX_SAFETENSORS_HEADER_BYTES, size - 8):
                raise GpumixError(f"malformed safetensors {path}: header length {length} exceeds the file or 100 MiB")
            header = json.loads(handle.read(length).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GpumixError(f"malformed safetensors header in {path}: {exc}") from None
    except OSError as exc:
        raise GpumixError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not isinstance(header, dict):
        raise GpumixError(f"malformed safetensors header in {path}: not a JSON object")
    _check_entries(header, path, size - 8 - length)
    return header


def _check_entries(header: dict[str, Any], path: Path, data_bytes: int) -> None:
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_bytes
            or not isinstance(shape, list)
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        ):
            raise GpumixError(f"malformed safetensors header in {path}: bad entry for tensor {name!r}")


def _layer_of(name: str) -> int | None:
    if any(tag in name for tag in _NON_TEXT):
        return None
    match = _LAYER_NAME.search(name)
    return int(match[1]) if match else None


def safetensors_weight_bytes(folder: Path, n_layers: int) -> tuple[tuple[int, ...], int, int, bool] | None:
    """(bytes per layer, other bytes, element count, all-float) from every safetensors header; None if no files."""
    files = _safetensors_files(folder)
    if not files:
        return None
    per_layer, rest, elements, all_float = [0] * n_layers, 0, 0, True
    for file in files:
        for name, entry in read_safetensors_header(file).items():
            if name == "__metadata__":
                continue
            n_bytes = entry["data_offsets"][1] - entry["data_offsets"][0]
            layer = _layer_of(name)
            if layer is not None and layer < n_layers:
                per_layer[layer] += n_bytes
            else:
                rest += n_bytes
            elements += math.prod(entry["shape"])
            all_float &= str(entry.get("dtype", "")).upper() in ("F16", "BF16", "F32")
    return tuple(per_layer), rest, elements, all_float


# ---------------------------------------------------------------------------------------------------------------


def config_to_spec(data: dict[str, Any], path: Path) -> ModelSpec:
    cfg = _text_config(data)
    model_type = str(cfg.get("model_type") or "")
    if not model_type:
        raise GpumixError(f"malformed config {path}: missing model_type", hint="is this a Hugging Face config.json?")
    arch = ARCHITECTURES.get(model_type, model_type)
    f = _Fields(cfg, path)
    hidden = f.integer("hidden_size", "d_model")
    n_layers = f.integer("num_hidden_layers", "n_layer", "num_layers")
    if not 0 < n_layers <= MAX_LAYERS:
        raise GpumixError(f"malformed config {path}: num_hidden_layers = {n_layers} (expected 1..{MAX_LAYERS})")
    n_heads = f.integer("num_attention_heads", "n_head")
    if n_heads == 0:
        raise GpumixError(f"malformed config {path}: num_attention_heads is 0")
    n_kv = f.integer("num_key_value_heads", default=n_heads)
    head_dim = f.integer("head_dim", default=hidden // n_heads)
    n_experts = f.integer("num_local_experts", "num_experts", default=0)
    n_used = f.integer("num_experts_per_tok", "experts_per_token", default=0)
    tied = cfg.get("tie_word_embeddings", TIED_DEFAULT.get(arch, False))
    shapes = Shapes(
        architecture=arch,
        n_layers=n_layers,
        hidden_size=hidden,
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=head_dim,
        intermediate_size=f.integer("intermediate_size", "ffn_dim"),
        vocab_size=f.integer("vocab_size"),
        tied_embeddings=bool(tied),
        n_experts=n_experts,
        n_experts_active=n_used,
    )
    total, active = count_params(shapes)
    window = _sliding_window(cfg)
    layer_bytes, rest_bytes = None, None
    tensors = safetensors_weight_bytes(path.parent, n_layers)
    if tensors is not None:
        layer_bytes, rest_bytes, elements, all_float = tensors
        if all_float:  # quantised files pack several weights per element: keep the shape count then
            total = elements
    name = cfg.get("_name_or_path") or path.parent.name
    return ModelSpec(
        id=path.parent.name.lower() or "config",
        name=str(name),
        architecture=arch,
        params_total=float(total),
        params_active=float(active) if n_experts > 1 else None,
        n_layers=n_layers,
        hidden_size=hidden,
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=head_dim,
        intermediate_size=shapes.intermediate_size,
        vocab_size=shapes.vocab_size,
        context_length=f.integer("max_position_embeddings", "n_positions", default=0),
        sliding_window=window or None,
        swa_layers=_swa_layers(cfg, arch, n_layers, window),
        n_experts=n_experts,
        n_experts_active=n_used,
        tied_embeddings=bool(tied),
        layer_weight_bytes=layer_bytes,
        non_layer_weight_bytes=rest_bytes,
        file_quant=_file_quant(cfg),
        path=str(path),
        source=f"HF config {path}" + (" + safetensors headers" if layer_bytes is not None else ""),
    )


def read_hf_config(path: str | Path) -> ModelSpec:
    """A ModelSpec from a config.json (or a model folder holding one), with safetensors bytes when present."""
    config = _config_path(Path(path))
    data = _load_json(config)
    try:
        return config_to_spec(data, config)
    except GpumixError:
        raise
    except (ValueError, TypeError) as exc:  # pydantic rejects impossible values
        raise GpumixError(f"malformed config {config}: {exc}".splitlines()[0]) from None
