"""Read a GGUF file's architecture and exact per-tensor bytes without touching the weights.

The file is memory-mapped and only its header (metadata + tensor table) is parsed. We walk the header ourselves
with the `gguf` package's constants (value types, GGML_QUANT_SIZES, LlamaFileType) instead of GGUFReader:
GGUFReader builds a Python object per array element and took 14 s on Gemma 3 270M's 262,144-token vocabulary
here; skipping long arrays takes well under a second. tests/models check both agree tensor by tensor.

Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md (v2/v3, little-endian).
"""

from __future__ import annotations

import glob
import math
import mmap
import re
import struct
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import gguf

from gpumix.errors import GpumixError
from gpumix.models.spec import ModelSpec

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32  # gguf.md: general.alignment defaults to 32
MAX_KEPT_ARRAY = 4096  # longer arrays (vocabularies, merges) are skipped; only their length is kept
MAX_DIMS = 8  # ggml tensors have at most 4 dims; more means garbage
MAX_LAYERS = 10_000  # the deepest published LLMs have ~200 blocks; more is a corrupt header (and a huge allocation)

# value type -> struct format of one item (GGUFValueType numbering, gguf.md)
_SCALAR_FORMATS = {
    gguf.GGUFValueType.UINT8: "<B",
    gguf.GGUFValueType.INT8: "<b",
    gguf.GGUFValueType.UINT16: "<H",
    gguf.GGUFValueType.INT16: "<h",
    gguf.GGUFValueType.UINT32: "<I",
    gguf.GGUFValueType.INT32: "<i",
    gguf.GGUFValueType.FLOAT32: "<f",
    gguf.GGUFValueType.BOOL: "<?",
    gguf.GGUFValueType.UINT64: "<Q",
    gguf.GGUFValueType.INT64: "<q",
    gguf.GGUFValueType.FLOAT64: "<d",
}

# Sliding-window layout when the file has a window but no `<arch>.attention.sliding_window_pattern`:
# (period, dense_first) exactly as llama.cpp's load_swa_pattern(ml, N[, dense_first]) in src/models/<arch>.cpp.
KNOWN_SWA_PATTERNS: dict[str, tuple[int, bool]] = {
    "gemma3": (6, False),  # 5 local : 1 global
    "gemma2": (2, False),
    "gemma3n": (5, False),
    "gemma-embedding": (6, False),
    "gpt-oss": (2, False),  # even layers sliding (128 tokens), odd layers full
    "cohere2": (4, False),
    "llama4": (4, False),
    "exaone4": (4, False),
    "olmo2": (4, False),
}

_LAYER_TENSOR = re.compile(r"^blk\.(\d+)\.")
_SHARD_NAME = re.compile(r"^(?P<stem>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


class _Malformed(Exception):
    """Internal: the header does not parse; turned into a GpumixError naming the file."""


@dataclass(frozen=True)
class LongArray:
    """Placeholder for a metadata array too long to keep (e.g. tokenizer.ggml.tokens)."""

    item_type: int
    length: int


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    ggml_type: gguf.GGMLQuantizationType
    offset: int  # relative to the data section
    n_elements: int
    n_bytes: int


@dataclass
class GGUFHeader:
    path: Path
    version: int
    metadata: dict[str, Any] = field(default_factory=dict)
    tensors: list[TensorInfo] = field(default_factory=list)
    data_offset: int = 0
    file_size: int = 0


class _Cursor:
    """Bounds-checked little-endian reads over a memory map."""

    def __init__(self, buf: mmap.mmap | bytes) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise _Malformed(f"truncated at byte {self.pos} (needs {size} more bytes)")
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += size
        return value

    def skip(self, n_bytes: int) -> None:
        if n_bytes < 0 or self.pos + n_bytes > len(self.buf):
            raise _Malformed(f"truncated at byte {self.pos} (needs {n_bytes} more bytes)")
        self.pos += n_bytes

    def string(self) -> str:
        length = self.take("<Q")
        start = self.pos
        self.skip(length)
        try:
            return bytes(self.buf[start : self.pos]).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Malformed(f"string at byte {start} is not UTF-8") from exc

    def skip_string(self) -> None:
        self.skip(self.take("<Q"))


def _value_type(raw: int) -> gguf.GGUFValueType:
    try:
        return gguf.GGUFValueType(raw)
    except ValueError as exc:
        raise _Malformed(f"unknown metadata value type {raw}") from exc


def _read_value(cur: _Cursor, vtype: gguf.GGUFValueType) -> Any:
    if vtype == gguf.GGUFValueType.STRING:
        return cur.string()
    if vtype == gguf.GGUFValueType.ARRAY:
        return _read_array(cur)
    return cur.take(_SCALAR_FORMATS[vtype])


def _read_array(cur: _Cursor) -> list[Any] | LongArray:
    item_type = _value_type(cur.take("<I"))
    count = cur.take("<Q")
    if item_type == gguf.GGUFValueType.ARRAY:
        raise _Malformed("nested metadata arrays are not used by any GGUF model")
    if count <= MAX_KEPT_ARRAY:
        return [_read_value(cur, item_type) for _ in range(count)]
    if item_type == gguf.GGUFValueType.STRING:
        for _ in range(count):
            cur.skip_string()
    else:
        cur.skip(count * struct.calcsize(_SCALAR_FORMATS[item_type]))
    return LongArray(int(item_type), count)


def _tensor_bytes(name: str, shape: tuple[int, ...], ggml_type: gguf.GGMLQuantizationType) -> tuple[int, int]:
    block_weights, block_bytes = gguf.GGML_QUANT_SIZES[ggml_type]
    n_elements = math.prod(shape)
    if shape and shape[0] % block_weights:
        raise _Malformed(f"tensor {name}: row of {shape[0]} is not a multiple of the {ggml_type.name} block ({block_weights})")
    return n_elements, n_elements // block_weights * block_bytes


def _read_tensor_info(cur: _Cursor) -> TensorInfo:
    name = cur.string()
    n_dims = cur.take("<I")
    if n_dims > MAX_DIMS:
        raise _Malformed(f"tensor {name!r} claims {n_dims} dimensions")
    shape = tuple(cur.take("<Q") for _ in range(n_dims))
    raw_type = cur.take("<I")
    try:
        ggml_type = gguf.GGMLQuantizationType(raw_type)
    except ValueError as exc:
        raise _Malformed(f"tensor {name!r} has unknown ggml type {raw_type}") from exc
    if ggml_type not in gguf.GGML_QUANT_SIZES:
        raise _Malformed(f"tensor {name!r} has ggml type {ggml_type.name} with no known block size")
    offset = cur.take("<Q")
    n_elements, n_bytes = _tensor_bytes(name, shape, ggml_type)
    return TensorInfo(name, shape, ggml_type, offset, n_elements, n_bytes)


def _parse_header(buf: mmap.mmap | bytes, path: Path) -> GGUFHeader:
    cur = _Cursor(buf)
    if len(buf) < 4 or bytes(buf[:4]) != GGUF_MAGIC:
        raise _Malformed(f"wrong magic {bytes(buf[:4])!r} (a GGUF file starts with b'GGUF')")
    cur.skip(4)
    version = cur.take("<I")
    if version not in (2, 3):
        hint = " (big-endian GGUF?)" if version > 0xFFFF else ""
        raise _Malformed(f"unsupported GGUF version {version}{hint}; gpumix reads v2 and v3")
    n_tensors, n_kv = cur.take("<Q"), cur.take("<Q")
    # Every tensor info and kv pair takes at least 8 bytes: bigger counts are garbage, not a huge model.
    if (n_tensors + n_kv) * 8 > len(buf):
        raise _Malformed(f"header claims {n_tensors} tensors and {n_kv} metadata keys, more than the file can hold")
    header = GGUFHeader(path=path, version=version, file_size=len(buf))
    for _ in range(n_kv):
        key = cur.string()
        header.metadata[key] = _read_value(cur, _value_type(cur.take("<I")))
    header.tensors = [_read_tensor_info(cur) for _ in range(n_tensors)]
    alignment = header.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0:
        raise _Malformed(f"general.alignment = {alignment!r} is not a positive integer")
    header.data_offset = -(-cur.pos // alignment) * alignment
    _check_data_fits(header)
    return header


def _check_data_fits(header: GGUFHeader) -> None:
    for tensor in header.tensors:
        end = header.data_offset + tensor.offset + tensor.n_bytes
        if end > header.file_size:
            raise _Malformed(
                f"tensor {tensor.name} ends at byte {end} but the file has {header.file_size} bytes (truncated download?)"
            )


def read_gguf_header(path: str | Path) -> GGUFHeader:
    """Parse one GGUF file's header. Raises GpumixError naming the file on any problem."""
    path = Path(path)
    if not path.is_file():
        raise GpumixError(f"GGUF file not found: {path}", hint="check the path (a .gguf file or the first shard)")
    try:
        with path.open("rb") as handle:
            if path.stat().st_size == 0:
                raise _Malformed("file is empty")
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _parse_header(buf, path)
    except _Malformed as exc:
        raise GpumixError(f"malformed GGUF {path}: {exc}", hint="re-download the file or check it is a GGUF model") from None
    except OSError as exc:
        raise GpumixError(f"cannot read GGUF {path}: {exc.strerror or exc}") from None


# ---------------------------------------------------------------------------------------------------------------
# shards


def shard_paths(path: Path, split_count: int) -> list[Path]:
    """All shards of a split GGUF (llama.cpp gguf-split naming: NAME-00001-of-00003.gguf)."""
    match = _SHARD_NAME.match(path.name)
    if not match:
        raise GpumixError(
            f"{path} has split.count={split_count} but its name is not NAME-0000k-of-0000n.gguf",
            hint="keep the shard names that gguf-split wrote",
        )
    stem = match["stem"]
    paths = [path.with_name(f"{stem}-{i:05d}-of-{split_count:05d}.gguf") for i in range(1, split_count + 1)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise GpumixError(f"GGUF shard(s) missing: {', '.join(missing)}", hint="download every shard into one folder")
    return paths


def read_gguf_headers(path: str | Path) -> list[GGUFHeader]:
    """The header of a GGUF and, for a split model, of every shard (first shard first)."""
    first = read_gguf_header(path)
    split_count = first.metadata.get("split.count", 1)
    if not isinstance(split_count, int) or split_count <= 1:
        return [first]
    paths = shard_paths(first.path, split_count)
    headers = [first if p == first.path else read_gguf_header(p) for p in paths]
    return sorted(headers, key=lambda h: h.metadata.get("split.no", 0))


# ---------------------------------------------------------------------------------------------------------------
# header -> ModelSpec


class _Meta:
    """Typed access to `<arch>.*` keys with the file named in every error."""

    def __init__(self, metadata: dict[str, Any], path: Path) -> None:
        self.metadata = metadata
        self.path = path
        arch = metadata.get("general.architecture")
        if not isinstance(arch, str) or not arch:
            raise GpumixError(f"malformed GGUF {path}: missing key general.architecture", hint="is this a model GGUF?")
        self.arch = arch

    def raw(self, key: str) -> Any:
        return self.metadata.get(f"{self.arch}.{key}")

    def ints(self, key: str, required: bool = False) -> tuple[int, ...]:
        """A scalar or per-layer array of ints; () when absent and optional."""
        value = self.raw(key)
        if value is None:
            if required:
                raise GpumixError(f"malformed GGUF {self.path}: missing key {self.arch}.{key}")
            return ()
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
            raise GpumixError(f"malformed GGUF {self.path}: {self.arch}.{key} = {value!r} is not a non-negative integer")
        return tuple(values)

    def first_int(self, key: str, default: int = 0, required: bool = False) -> int:
        values = self.ints(key, required)
        return max(values) if values else default


def _swa_layers(meta: _Meta, n_layers: int, window: int) -> tuple[bool, ...]:
    if window <= 0:
        return ()
    pattern = meta.raw("attention.sliding_window_pattern")
    if isinstance(pattern, list) and len(pattern) == n_layers:
        return tuple(bool(p) for p in pattern)
    if isinstance(pattern, int) and not isinstance(pattern, bool):
        return expand_swa_pattern(n_layers, pattern)
    if meta.arch in KNOWN_SWA_PATTERNS:
        period, dense_first = KNOWN_SWA_PATTERNS[meta.arch]
        return expand_swa_pattern(n_layers, period, dense_first)
    return ()  # window given but layout unknown: assume full attention (over-estimates KV rather than under)


def expand_swa_pattern(n_layers: int, period: int, dense_first: bool = False) -> tuple[bool, ...]:
    """llama_hparams::set_swa_pattern: period 0 = all sliding; else one full layer per period (last, or first)."""
    if period <= 0:
        return (True,) * n_layers
    if dense_first:
        return tuple(i % period != 0 for i in range(n_layers))
    return tuple(i % period < period - 1 for i in range(n_layers))


def _file_quant(metadata: dict[str, Any], tensors: list[TensorInfo]) -> str | None:
    file_type = metadata.get("general.file_type")
    if isinstance(file_type, int):
        try:
            name = gguf.LlamaFileType(file_type).name
        except ValueError:
            name = None
        if name:
            name = name.removeprefix("MOSTLY_").removeprefix("ALL_").lower()
            return {"mxfp4_moe": "mxfp4"}.get(name, name)
    weights = [t for t in tensors if len(t.shape) >= 2]
    if not weights:
        return None
    by_type: dict[str, int] = {}
    for t in weights:
        by_type[t.ggml_type.name.lower()] = by_type.get(t.ggml_type.name.lower(), 0) + t.n_bytes
    return max(by_type, key=by_type.__getitem__)


def _is_expert_tensor(name: str) -> bool:
    return "_exps." in name  # llama.cpp names routed experts ffn_{gate,up,down,gate_up}_exps; shared ones _shexp


def _weight_bytes(tensors: list[TensorInfo], n_layers: int) -> tuple[tuple[int, ...], int]:
    per_layer = [0] * n_layers
    rest = 0
    for t in tensors:
        match = _LAYER_TENSOR.match(t.name)
        if match and int(match[1]) < n_layers:
            per_layer[int(match[1])] += t.n_bytes
        else:
            rest += t.n_bytes  # token_embd, output, output_norm, and any extra (e.g. next-token) blocks
    return tuple(per_layer), rest


def _vocab_size(meta: _Meta, tensors: list[TensorInfo]) -> int:
    explicit = meta.first_int("vocab_size")
    if explicit:
        return explicit
    tokens = meta.metadata.get("tokenizer.ggml.tokens")
    if isinstance(tokens, LongArray):
        return tokens.length
    if isinstance(tokens, list):
        return len(tokens)
    embd = next((t for t in tensors if t.name == "token_embd.weight" and len(t.shape) == 2), None)
    return embd.shape[1] if embd else 0


def gguf_header_to_spec(headers: list[GGUFHeader]) -> ModelSpec:
    first = headers[0]
    meta = _Meta(first.metadata, first.path)
    tensors = [t for h in headers for t in h.tensors]
    n_layers = meta.first_int("block_count", required=True)
    if not 0 < n_layers <= MAX_LAYERS:
        raise GpumixError(f"malformed GGUF {first.path}: {meta.arch}.block_count = {n_layers} (expected 1..{MAX_LAYERS})")
    n_embd = meta.first_int("embedding_length", required=True)
    head_counts = meta.ints("attention.head_count", required=True)
    n_heads = max(head_counts)
    kv_counts = meta.ints("attention.head_count_kv") or (n_heads,)
    head_dim = meta.first_int("attention.key_length", default=n_embd // n_heads if n_heads else 0)
    window = meta.first_int("attention.sliding_window")
    n_experts = meta.first_int("expert_count")
    n_used = meta.first_int("expert_used_count")
    ffn = meta.first_int("expert_feed_forward_length") if n_experts > 1 else 0
    total = sum(t.n_elements for t in tensors)
    active = None
    if n_experts > 1 and n_used:
        expert_elems = sum(t.n_elements for t in tensors if _is_expert_tensor(t.name))
        active = total - expert_elems * (1 - min(n_used, n_experts) / n_experts)
    layer_bytes, rest_bytes = _weight_bytes(tensors, n_layers)
    name = first.metadata.get("general.name")
    return ModelSpec(
        id=first.path.stem.lower(),
        name=name if isinstance(name, str) and name else first.path.stem,
        architecture=meta.arch,
        params_total=float(total),
        params_active=float(active) if active is not None else None,
        n_layers=n_layers,
        hidden_size=n_embd,
        n_heads=n_heads,
        n_kv_heads=max(kv_counts),
        kv_heads_per_layer=kv_counts if len(kv_counts) > 1 else (),
        head_dim=head_dim,
        intermediate_size=ffn or meta.first_int("feed_forward_length"),
        vocab_size=_vocab_size(meta, tensors),
        context_length=meta.first_int("context_length"),
        sliding_window=window or None,
        swa_layers=_swa_layers(meta, n_layers, window),
        n_experts=n_experts,
        n_experts_active=n_used,
        tied_embeddings=not any(t.name == "output.weight" for t in tensors),
        layer_weight_bytes=layer_bytes,
        non_layer_weight_bytes=rest_bytes,
        file_quant=_file_quant(first.metadata, tensors),
        path=str(first.path),
        source=f"GGUF header of {first.path}" + (f" (+{len(headers) - 1} shards)" if len(headers) > 1 else ""),
    )


def read_gguf(path: str | Path) -> ModelSpec:
    """A ModelSpec from a .gguf file (every shard of a split model), with exact per-layer weight bytes.

    Cached per (path, mtime, size) of the file and its sibling shards: planners call this once per candidate.
    """
    path = Path(path)
    try:
        key = _file_state(path)
    except OSError:
        return _read_gguf_uncached(str(path))  # raises the not-found error
    return _read_gguf_cached(str(path.resolve()), key)


def _file_state(path: Path) -> tuple[tuple[str, int, int], ...]:
    match = _SHARD_NAME.match(path.name)
    files = sorted(path.parent.glob(f"{glob.escape(match['stem'])}-*-of-{match['count']}.gguf")) if match else []
    return tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in [path, *files])


@lru_cache(maxsize=32)
def _read_gguf_cached(path: str, _state: tuple[tuple[str, int, int], ...]) -> ModelSpec:
    return _read_gguf_uncached(path)


def _read_gguf_uncached(path: str) -> ModelSpec:
    headers = read_gguf_headers(path)
    try:
        return gguf_header_to_spec(headers)
    except GpumixError:
        raise
    except (ValueError, TypeError, ZeroDivisionError) as exc:  # pydantic rejects impossible values
        raise GpumixError(f"malformed GGUF {headers[0].path}: {exc}".splitlines()[0]) from None
