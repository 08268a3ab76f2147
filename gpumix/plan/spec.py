"""The plan file (YAML): devices, links, services, prices. See docs/plan-file.md for every key.

Validation is strict (pydantic, `extra="forbid"`). Every error names the file, the line, the field and — where a
close match exists — what was probably meant. It is always a GpumixError, never a traceback.
"""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gpumix.errors import GpumixError
from gpumix.hardware.spec import HOST_PATTERN, DeviceRef
from gpumix.kinds import Engine, Objective, ServiceMode, Topology

MAX_PLAN_FILE_BYTES = 2_000_000  # a plan for hundreds of services is a few hundred kB
NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"  # usable as a process, container and DNS label


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class CpuEntry(_Strict):
    ram_gb: float | None = Field(default=None, gt=0, le=65536)
    bandwidth_gbs: float | None = Field(default=None, gt=0, le=100000)
    threads: int | None = Field(default=None, ge=1, le=4096)
    free_gb: float | None = Field(default=None, gt=0, le=65536)


def _text_or_number(value: Any) -> Any:
    """`gpu: 4090` or `quant: 8` read as numbers in YAML: accept them as text."""
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


class DeviceEntry(_Strict):
    gpu: str | None = None
    cpu: CpuEntry | None = None
    index: int | None = Field(default=None, ge=0, le=1023)
    host: str | None = Field(default=None, pattern=HOST_PATTERN)
    free_gb: float | None = Field(default=None, gt=0, le=4096)
    count: int = Field(default=1, ge=1, le=64)
    driver: str | None = Field(default=None, max_length=64)  # driver version, e.g. "570.133.07"
    pcie_gen: int | None = Field(default=None, ge=1, le=6)
    pcie_lanes: int | None = Field(default=None, ge=1, le=32)
    socket: int | None = Field(default=None, ge=0, le=64)  # CPU socket / NUMA node the card hangs off

    _gpu_text = field_validator("gpu", "host", "driver", mode="before")(_text_or_number)

    @model_validator(mode="after")
    def _one_kind(self) -> DeviceEntry:
        if (self.gpu is None) == (self.cpu is None):
            raise ValueError("each device needs exactly one of `gpu:` (a card name) or `cpu:` (system RAM)")
        if self.cpu is not None and (self.index is not None or self.count != 1 or self.free_gb is not None):
            raise ValueError("index/count/free_gb belong to GPUs; put RAM sizes inside `cpu: {ram_gb: ...}`")
        return self


class LinksEntry(_Strict):
    pcie_gen: int | None = Field(default=None, ge=1, le=6)
    pcie_lanes: list[int] | None = None
    nvlink: bool = False
    nvlink_gbs: float | None = Field(default=None, gt=0)
    topology: Topology | None = None
    network_gbs: float | None = Field(default=None, gt=0)  # between hosts (RPC / Ray)

    @field_validator("pcie_lanes")
    @classmethod
    def _lanes(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and any(not 1 <= lanes <= 32 for lanes in value):
            raise ValueError("PCIe lane counts are 1..32 (x1, x4, x8, x16)")
        return value


class SloEntry(_Strict):
    decode_tokens_per_s: float | None = Field(default=None, gt=0)
    aggregate_tokens_per_s: float | None = Field(default=None, gt=0)
    ttft_ms: float | None = Field(default=None, gt=0)
    throughput: float | None = Field(default=None, gt=0)  # non-LLM services, in their own unit


class ServiceEntry(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    model: str = Field(min_length=1, max_length=512)
    file: str | None = Field(default=None, min_length=1, max_length=1024)  # pypi:PACKAGE or a path
    quant: str | None = Field(default=None, min_length=1, max_length=32)
    engine: Engine | None = None
    context: int | None = Field(default=None, ge=256, le=10_000_000)
    concurrency: int = Field(default=1, ge=1, le=4096)
    objective: Objective | None = None
    slo: SloEntry | None = None
    replicas: int = Field(default=1, ge=1, le=64)
    mode: ServiceMode = "auto"
    load: float | None = Field(default=None, gt=0, le=1)  # expected busy share of its device(s)
    host: str | None = Field(default=None, pattern=HOST_PATTERN)  # pin to a host
    devices: list[int | str] | None = None  # pin to these devices: indices (on any host) or ids (gpu0, box-a/gpu1)
    fallback: str | None = None
    kv_cache_dtype: str | None = None
    allow_rpc: bool = False  # allow a llama.cpp layer split across hosts (over the network, llama.cpp RPC)
    allow_multinode: bool = False  # allow vLLM pipeline parallel across hosts (one Ray cluster over them)
    task: Literal["chat", "embeddings", "rerank"] | None = None  # what an LLM-file model serves (default chat)
    threads: int | None = Field(default=None, ge=1, le=4096)  # CPU threads for this service (llama.cpp -t)

    _text = field_validator("model", "quant", "host", "kv_cache_dtype", mode="before")(_text_or_number)

    @field_validator("devices")
    @classmethod
    def _device_ids(cls, value: list[int | str] | None) -> list[int | str] | None:
        for item in value or []:
            if isinstance(item, str):
                try:
                    DeviceRef.parse(item)
                except GpumixError:
                    raise ValueError(f"{item!r} is not a device index or id (gpu0, cpu0, HOST/gpu1)") from None
        return value


class PriceEntry(_Strict):
    gbp_per_month: float = Field(ge=0, le=1_000_000)


class RuntimeEntry(_Strict):
    containers: bool = False
    container_gpus: Literal["pinned", "all"] = "pinned"  # `all` = docker --gpus all / count: all


class PlanSpec(_Strict):
    devices: list[DeviceEntry] | None = None
    links: LinksEntry | None = None
    services: list[ServiceEntry] = Field(min_length=1, max_length=4096)
    prices: dict[str, PriceEntry] = Field(default_factory=dict)
    objective: Objective | None = None
    runtime: RuntimeEntry = RuntimeEntry()


# ------------------------------------------------------------------------------------------- YAML with lines


class SourceLines:
    """Line numbers (1-based) of every mapping key and sequence item, by path."""

    def __init__(self) -> None:
        self.by_path: dict[tuple[Any, ...], int] = {}

    def line(self, loc: tuple[Any, ...]) -> int | None:
        for end in range(len(loc), -1, -1):
            found = self.by_path.get(tuple(loc[:end]))
            if found is not None:
                return found
        return None


def _walk(node: yaml.Node, path: tuple[Any, ...], lines: SourceLines, source: str) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.start_mark)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise GpumixError(f"{source}:{line}: key {_dotted((*path, key))!r} appears twice", hint="keep one")
            seen.add(key)
            lines.by_path[(*path, key)] = line
            _walk(value_node, (*path, key), lines, source)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines.by_path[(*path, i)] = item.start_mark.line + 1
            _walk(item, (*path, i), lines, source)


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def read_yaml_with_lines(text: str, source: str) -> tuple[Any, SourceLines]:
    lines = SourceLines()
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None, lines
            _walk(node, (), lines, source)
            data = loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}" if mark else source
        raise GpumixError(f"{where}: not valid YAML ({exc.problem or exc.context})") from None
    except yaml.YAMLError as exc:
        raise GpumixError(f"{source}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except RecursionError:
        raise GpumixError(f"{source}: YAML nested too deeply") from None
    return data, lines


# ------------------------------------------------------------------------------------------- errors


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside `X | None`, `list[X]` or `dict[str, X]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType, list, dict, tuple):
        for arg in typing.get_args(annotation):
            found = _inner_model(arg)
            if found is not None:
                return found
    return None


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model whose fields live at `loc` (e.g. ('services', 0) -> ServiceEntry)."""
    model: type[BaseModel] | None = PlanSpec
    for part in loc:
        if model is None:
            return None
        if isinstance(part, int) or part not in model.model_fields:
            if model is PlanSpec or not isinstance(part, str):
                continue
            # dict keys (prices: {RTX 4090: ...}) — stay on the value model
            continue
        model = _inner_model(model.model_fields[part].annotation)
    return model


def did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _format_error(err: dict[str, Any], lines: SourceLines, source: str) -> str:
    loc = tuple(err["loc"])
    line = lines.line(loc)
    where = f"{source}:{line}" if line else source
    field = _dotted(loc) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        allowed = sorted(model.model_fields) if model else []
        hint = did_you_mean(str(loc[-1]), allowed)
        return f"{where}: unknown key {field!r}{hint} (allowed here: {', '.join(allowed)})"
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        options = [o.strip().strip("'") for o in str(expected).replace(" or ", ",").split(",") if o.strip()]
        return f"{where}: {field}: {err['input']!r} is not one of {expected}{did_you_mean(str(err['input']), options)}"
    if kind == "missing":
        return f"{where}: {field}: required key missing"
    msg = err["msg"].removeprefix("Value error, ")
    shown = repr(err.get("input"))
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    if isinstance(err.get("input"), dict | list):
        return f"{where}: {field}: {msg}"
    return f"{where}: {field}: {msg} (got {shown})"


def parse_plan_text(text: str, source: str = "<plan>") -> PlanSpec:
    """Validate plan-file text; raise GpumixError naming file:line and field."""
    return parse_plan_text_with_lines(text, source)[0]


def parse_plan_text_with_lines(text: str, source: str = "<plan>") -> tuple[PlanSpec, SourceLines]:
    if len(text.encode("utf-8", "replace")) > MAX_PLAN_FILE_BYTES:
        raise GpumixError(f"{source}: larger than {MAX_PLAN_FILE_BYTES} bytes; not a plan file")
    data, lines = read_yaml_with_lines(text, source)
    if not isinstance(data, dict):
        raise GpumixError(
            f"{source}: a plan file is a mapping with a `services:` list",
            hint="see docs/plan-file.md or examples/hybrid-box.yaml",
        )
    if isinstance(data.get("prices"), dict):  # card names may read as numbers ("4090: ...")
        data["prices"] = {str(k): v for k, v in data["prices"].items()}
    bad_keys = [k for k in _all_keys(data) if not isinstance(k, str)]
    if bad_keys:
        raise GpumixError(f"{source}: keys must be text, got {bad_keys[0]!r}", hint="quote the key")
    try:
        spec = PlanSpec.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        first = _format_error(errors[0], lines, source)
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise GpumixError(first + more, hint="see docs/plan-file.md for the plan-file keys") from None
    _check_names(spec, lines, source)
    return spec, lines


def _check_names(spec: PlanSpec, lines: SourceLines, source: str) -> None:
    names = [s.name for s in spec.services]
    for i, svc in enumerate(spec.services):
        where = f"{source}:{lines.line(('services', i, 'name'))}"
        if svc.name in names[:i]:
            raise GpumixError(f"{where}: services[{i}].name: {svc.name!r} is used twice", hint="names must be unique")
        if svc.fallback is not None and svc.fallback not in names:
            where = f"{source}:{lines.line(('services', i, 'fallback'))}"
            raise GpumixError(
                f"{where}: services[{i}].fallback: {svc.fallback!r} is not a service in this file"
                + did_you_mean(svc.fallback, names)
            )


def _all_keys(data: Any) -> list[Any]:
    out: list[Any] = []
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            out.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return out


def load_plan_spec(path: Path) -> PlanSpec:
    return load_plan_with_lines(path)[0]


def load_plan_with_lines(path: Path) -> tuple[PlanSpec, SourceLines]:
    try:
        if path.stat().st_size > MAX_PLAN_FILE_BYTES:
            raise GpumixError(f"{path}: larger than {MAX_PLAN_FILE_BYTES} bytes; not a plan file")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GpumixError(f"plan file {path} does not exist", hint="see examples/ for plan files") from None
    except IsADirectoryError:
        raise GpumixError(f"{path} is a directory, not a plan file") from None
    except UnicodeDecodeError:
        raise GpumixError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise GpumixError(f"cannot read plan file {path}: {exc.strerror}") from None
    return parse_plan_text_with_lines(text, str(path))
