"""Exact bytes a decode token reads on each device, from the GGUF's tensor table (not params × bits)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from gpumix.errors import GpumixError

_BLOCK = re.compile(r"^blk\.(\d+)\.")


@dataclass(frozen=True)
class ModelLayout:
    path: str
    name: str
    n_layers: int
    layer_bytes: tuple[int, ...]  # every tensor of blk.N
    output_bytes: int  # output.weight (or the tied token_embd.weight llama.cpp duplicates) + output_norm
    input_bytes: int  # token_embd.weight: stays in host memory, one row read per token
    file_bytes: int
    tied_embeddings: bool
    kv_bytes_per_token_per_layer: int = 0  # f16 K + V of one token in one layer (0 when the file does not say)

    @property
    def weight_bytes(self) -> int:
        return sum(self.layer_bytes) + self.output_bytes

    def bytes_on(self, layers: int, start: int, holds_output: bool) -> int:
        """Weights of layers [start, start + layers) plus the output layer when held."""
        return sum(self.layer_bytes[start : start + layers]) + (self.output_bytes if holds_output else 0)


def read_layout(path: str | Path) -> ModelLayout:
    from gguf import GGUFReader

    path = Path(path)
    if not path.is_file():
        raise GpumixError(f"model file {path} does not exist", hint="pass a .gguf path or a catalog id")
    try:
        reader = GGUFReader(str(path))
    except Exception as exc:  # gguf raises ValueError/struct.error/... on a file that is not GGUF
        raise GpumixError(f"{path} is not a readable GGUF file: {exc}") from exc
    per_layer: dict[int, int] = {}
    named: dict[str, int] = {}
    for tensor in reader.tensors:
        match = _BLOCK.match(tensor.name)
        if match:
            idx = int(match.group(1))
            per_layer[idx] = per_layer.get(idx, 0) + int(tensor.n_bytes)
        else:
            named[tensor.name] = int(tensor.n_bytes)
    if not per_layer:
        raise GpumixError(f"{path}: no blk.N tensors; gpumix tune needs a layered LLM GGUF")
    n_layers = max(per_layer) + 1
    tied = "output.weight" not in named
    output = named.get("output.weight", named.get("token_embd.weight", 0)) + named.get("output_norm.weight", 0)
    name = _field(reader, "general.name") or path.stem
    arch = _field(reader, "general.architecture") or ""
    kv_heads = _field(reader, f"{arch}.attention.head_count_kv") or _field(reader, f"{arch}.attention.head_count")
    key_len = _field(reader, f"{arch}.attention.key_length")
    value_len = _field(reader, f"{arch}.attention.value_length")
    if not key_len:
        heads, embd = _field(reader, f"{arch}.attention.head_count"), _field(reader, f"{arch}.embedding_length")
        key_len = value_len = embd // heads if heads and embd else 0
    f16 = 2
    kv_per_token = int(kv_heads or 0) * (int(key_len or 0) + int(value_len or key_len or 0)) * f16
    return ModelLayout(
        path=str(path),
        name=name,
        n_layers=n_layers,
        layer_bytes=tuple(per_layer.get(i, 0) for i in range(n_layers)),
        output_bytes=output,
        input_bytes=named.get("token_embd.weight", 0),
        file_bytes=path.stat().st_size,
        tied_embeddings=tied,
        kv_bytes_per_token_per_layer=kv_per_token,
    )


def _field(reader, key: str):
    """A scalar or string metadata value (arrays: the first element), None when absent."""
    field = reader.fields.get(key)
    if field is None or not field.data:
        return None
    try:
        value = field.parts[field.data[0]]
        if field.types and field.types[0].name == "STRING":
            return bytes(value).decode("utf-8", "replace")
        return value.tolist()[0]
    except (IndexError, TypeError, AttributeError):
        return None
