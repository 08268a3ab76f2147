"""Exact bytes a decode token reads on each device, from the GGUF's tensor table (not params × bits)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpumix.errors import GpumixError
from gpumix.models.gguf_file import gguf_header_to_spec, read_gguf_headers
from gpumix.models.spec import ModelSpec

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
    """The layout from the GGUF header (gpumix's own reader: every shard of a split model, no tensor data read)."""
    path = Path(path)
    if not path.is_file():
        raise GpumixError(f"model file {path} does not exist", hint="pass a .gguf path or a catalog id")
    headers = read_gguf_headers(path)
    tensor_bytes = {t.name: t.n_bytes for header in headers for t in header.tensors}
    per_layer: dict[int, int] = {}
    for name, n_bytes in tensor_bytes.items():
        if match := _BLOCK.match(name):
            per_layer[int(match.group(1))] = per_layer.get(int(match.group(1)), 0) + n_bytes
    if not per_layer:
        raise GpumixError(f"{path}: no blk.N tensors; gpumix tune needs a layered LLM GGUF")
    spec = gguf_header_to_spec(headers)
    n_layers = max(per_layer) + 1
    tied = "output.weight" not in tensor_bytes
    output = tensor_bytes.get("output.weight", tensor_bytes.get("token_embd.weight", 0))
    return ModelLayout(
        path=str(path),
        name=spec.name,
        n_layers=n_layers,
        layer_bytes=tuple(per_layer.get(i, 0) for i in range(n_layers)),
        output_bytes=output + tensor_bytes.get("output_norm.weight", 0),
        input_bytes=tensor_bytes.get("token_embd.weight", 0),
        file_bytes=sum(header.file_size for header in headers),
        tied_embeddings=tied,
        kv_bytes_per_token_per_layer=_kv_bytes_per_token_per_layer(headers[0].metadata, spec),
    )


def _kv_bytes_per_token_per_layer(metadata: dict[str, Any], spec: ModelSpec) -> int:
    """f16 K + V of one token in one layer: KV heads x (key length + value length) x 2 bytes."""
    value_length = metadata.get(f"{spec.architecture}.attention.value_length")
    value_dim = value_length if isinstance(value_length, int) and value_length > 0 else spec.head_dim
    f16_bytes = 2
    return spec.n_kv_heads * (spec.head_dim + value_dim) * f16_bytes
