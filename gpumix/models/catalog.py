"""The model and quantisation catalogs (data/models.yaml, data/quants.csv) and forgiving name resolution.

Names resolve after normalising: lower case, the "org/" prefix and ".gguf" dropped, parenthesised remarks dropped,
separators removed ("Llama-3.1-8B" = "llama 3.1 8b" = "llama3.1:8b"). If that finds nothing, words that do not
change the architecture are dropped too (instruct, chat, hf, it, base, meta...): "Meta-Llama-3-8B-Instruct" is
Llama 3 8B. A name that matches two entries, or none, is a GpumixError listing the closest matches.
"""

from __future__ import annotations

import csv
import difflib
import re
from collections.abc import Iterable
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from gpumix.errors import GpumixError
from gpumix.models.files import user_path
from gpumix.models.gguf_file import GGUF_MAGIC, expand_swa_pattern, read_gguf
from gpumix.models.hf_config import read_hf_config
from gpumix.models.spec import ComputeDtype, ModelSpec, QuantSpec

# Words in repo/file names that name a fine-tune or packaging, not a different architecture.
NEUTRAL_WORDS = frozenset({"instruct", "chat", "hf", "it", "base", "meta", "gguf", "pt", "moe", "model"})
LOADER_ONLY_KEYS = ("inherit", "swa_every")
# A trailing weight format in file names: "gemma-3-270m-it-Q4_K_M", "llama-2-7b.Q4_0", "Llama-3.1-8B-Instruct-AWQ-INT4"
QUANT_SUFFIX = re.compile(r"[-_. ](?:i?q\d\w*|f16|bf16|f32|fp8|fp16|mxfp4\w*|(?:awq|gptq)(?:-int4)?|int4|int8)$")


def _tokens(name: str, drop_quant: bool = False) -> list[str]:
    text = name.strip().lower()
    text = text.rsplit("/", 1)[-1] if "/" in text else text
    text = re.sub(r"\.gguf$", "", text)
    text = re.sub(r"\([^)]*\)", " ", text)
    if drop_quant:
        text = QUANT_SUFFIX.sub("", text)
    return re.findall(r"[a-z0-9.]+", text)


def strict_key(name: str) -> str:
    return "".join(_tokens(name)).strip(".")


def loose_key(name: str) -> str:
    return "".join(t for t in _tokens(name, drop_quant=True) if t not in NEUTRAL_WORDS).strip(".")


class _Index:
    """name key -> ids, for strict and loose keys."""

    def __init__(self, entries: Iterable[tuple[str, Iterable[str]]]) -> None:
        self.strict: dict[str, set[str]] = {}
        self.loose: dict[str, set[str]] = {}
        for entry_id, names in entries:
            for name in names:
                self.strict.setdefault(strict_key(name), set()).add(entry_id)
                self.loose.setdefault(loose_key(name), set()).add(entry_id)

    def find(self, name: str) -> set[str]:
        return self.strict.get(strict_key(name)) or self.loose.get(loose_key(name)) or set()

    def closest(self, name: str, n: int = 5) -> list[str]:
        keys = difflib.get_close_matches(strict_key(name), list(self.strict), n=n * 3, cutoff=0.5)
        found: list[str] = []
        for key in keys:
            for entry_id in sorted(self.strict[key]):
                if entry_id not in found:
                    found.append(entry_id)
        return found[:n]


def _resolve(index: _Index, name: str, what: str, list_cmd: str) -> str:
    ids = index.find(name)
    if len(ids) == 1:
        return next(iter(ids))
    if len(ids) > 1:
        raise GpumixError(f"{what} '{name}' is ambiguous: {', '.join(sorted(ids))}", hint="use one of these ids")
    close = index.closest(name)
    hint = f"closest: {', '.join(close)}" if close else f"see `{list_cmd}`"
    raise GpumixError(f"unknown {what} '{name}'", hint=hint)


# ---------------------------------------------------------------------------------------------------------------
# models


def _data_text(filename: str) -> str:
    return resources.files("gpumix.models").joinpath("data", filename).read_text(encoding="utf-8")


def _expand_entry(raw: dict[str, Any], by_id: dict[str, dict[str, Any]]) -> dict[str, Any]:
    entry = dict(raw)
    parent = entry.get("inherit")
    if parent is not None:
        if parent not in by_id:
            raise GpumixError(f"models.yaml: {entry.get('id')} inherits unknown id {parent}")
        # aliases and source are the child's own; everything else is copied from the parent
        entry = {**{k: v for k, v in by_id[parent].items() if k not in ("aliases", "source")}, **entry}
    period = entry.get("swa_every")
    if period is not None:
        entry["swa_layers"] = expand_swa_pattern(int(entry["n_layers"]), int(period))
    return entry


def parse_model_catalog(text: str) -> list[ModelSpec]:
    data = yaml.safe_load(text)
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise GpumixError("models.yaml: expected a top-level 'models:' list")
    by_id: dict[str, dict[str, Any]] = {}
    specs: list[ModelSpec] = []
    for raw in data["models"]:
        entry = _expand_entry(raw, by_id)
        by_id[entry["id"]] = entry
        fields = {k: v for k, v in entry.items() if k not in LOADER_ONLY_KEYS}
        fields["aliases"] = tuple(fields.get("aliases") or ())
        try:
            specs.append(ModelSpec(**fields))
        except ValidationError as exc:
            raise GpumixError(f"models.yaml: entry {entry.get('id')}: {exc}".splitlines()[0]) from None
    return specs


@lru_cache(maxsize=1)
def _models() -> tuple[dict[str, ModelSpec], _Index]:
    specs = parse_model_catalog(_data_text("models.yaml"))
    by_id = {spec.id: spec for spec in specs}
    index = _Index((spec.id, (spec.id, spec.name, *spec.aliases)) for spec in specs)
    return by_id, index


def all_models(kind: str | None = None) -> list[ModelSpec]:
    """Every catalog entry, in file order; `kind` filters ("llm", "image", "audio", "embedding", "reranker")."""
    return [m for m in _models()[0].values() if kind is None or m.kind == kind]


def resolve_model(name: str) -> ModelSpec:
    """A catalog model by id, name or alias ("Llama 3 8B", "llama-3-8b", "meta-llama/Meta-Llama-3-8B")."""
    by_id, index = _models()
    return by_id[_resolve(index, name, "model", "gpumix models")]


def search_models(query: str) -> list[ModelSpec]:
    """Catalog entries whose id, name or an alias contains the query (normalised); all when query is empty."""
    needle = strict_key(query)
    return [
        m for m in all_models() if not needle or any(needle in strict_key(n) for n in (m.id, m.name, *m.aliases))
    ]


def _is_gguf(path: Path) -> bool:
    if path.suffix.lower() == ".gguf":
        return True
    try:
        with path.open("rb") as handle:
            return handle.read(4) == GGUF_MAGIC
    except OSError:
        return False


def _gguf_in_folder(folder: Path) -> Path | None:
    ggufs = sorted(folder.glob("*.gguf"))
    firsts = [p for p in ggufs if not re.search(r"-\d{5}-of-\d{5}\.gguf$", p.name) or "-00001-of-" in p.name]
    if len(firsts) > 1:
        raise GpumixError(f"{folder} holds several GGUF models: {', '.join(p.name for p in firsts[:4])}", hint="pass one file")
    return firsts[0] if firsts else None


def load_model(ref: str | Path) -> ModelSpec:
    """A ModelSpec from a catalog id/alias, a .gguf path, a config.json path, or a model folder."""
    text = str(ref)
    path = user_path(text)
    if path.is_dir():
        if (path / "config.json").is_file():
            return read_hf_config(path)
        gguf_path = _gguf_in_folder(path)
        if gguf_path is None:
            raise GpumixError(f"{path} holds neither a config.json nor a .gguf file")
        return read_gguf(gguf_path)
    if path.is_file():
        return read_gguf(path) if _is_gguf(path) else read_hf_config(path)
    if text.lower().endswith((".gguf", ".json")):
        raise GpumixError(f"file not found: {path}", hint="check the path, or pass a catalog model name")
    return resolve_model(text)


# ---------------------------------------------------------------------------------------------------------------
# quantisations


_COMPUTE_DTYPE: TypeAdapter[ComputeDtype] = TypeAdapter(ComputeDtype)


def parse_quant_catalog(text: str) -> list[QuantSpec]:
    specs = []
    for row in csv.DictReader(text.splitlines()):
        try:
            specs.append(
                QuantSpec(
                    id=row["id"],
                    bits_per_weight=float(row["bits_per_weight"]),
                    block_weights=int(row["block_weights"]),
                    block_bytes=float(row["block_bytes"]),
                    file_bits_per_weight=float(row["file_bits_per_weight"]) if row["file_bits_per_weight"] else None,
                    embedding_bits_per_weight=(
                        float(row["embedding_bits_per_weight"]) if row.get("embedding_bits_per_weight") else None
                    ),
                    compute_dtype=_COMPUTE_DTYPE.validate_python(row["compute_dtype"]),
                    engines=tuple(row["engines"].split("|")),
                    aliases=tuple(a for a in row["aliases"].split("|") if a),
                    source=row["source"],
                )
            )
        except (KeyError, ValueError, ValidationError) as exc:
            raise GpumixError(f"quants.csv: row {row.get('id')}: {exc}".splitlines()[0]) from None
    return specs


def quant_key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


@lru_cache(maxsize=1)
def _quants() -> tuple[dict[str, QuantSpec], dict[str, str]]:
    specs = parse_quant_catalog(_data_text("quants.csv"))
    by_id = {q.id: q for q in specs}
    keys: dict[str, str] = {}
    for q in specs:
        for name in (q.id, *q.aliases):
            keys[quant_key(name)] = q.id
    return by_id, keys


def all_quants() -> list[QuantSpec]:
    return list(_quants()[0].values())


def resolve_quant(name: str) -> QuantSpec:
    """A weight format by id or alias: "Q4_K_M", "q4km", "QAT Q4_0", "F16", "awq", "MXFP4"."""
    by_id, keys = _quants()
    key = quant_key(name)
    if key in keys:
        return by_id[keys[key]]
    close = difflib.get_close_matches(key, list(keys), n=5, cutoff=0.5)
    ids = list(dict.fromkeys(keys[k] for k in close))
    hint = f"closest: {', '.join(ids)}" if ids else "see `gpumix quants`"
    raise GpumixError(f"unknown quantisation '{name}'", hint=hint)
