"""The plan file (YAML): devices, links, services, prices. See docs/plan-file.md for every key.

Validation is strict (pydantic, `extra="forbid"`). Every error names the file, the line, the field and — where a
close match exists — what was probably meant. It is always a GpumixError, never a traceback.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gpumix.errors import GpumixError
from gpumix.hardware.entries import DeviceEntry, text_or_number
from gpumix.hardware.spec import HOST_PATTERN, DeviceRef
from gpumix.kinds import Engine, MemoryChoice, Objective, ServiceMode, Topology
from gpumix.yaml_input import SourceLines, did_you_mean, read_yaml_with_lines, validation_error

MAX_PLAN_FILE_BYTES = 2_000_000  # a plan for hundreds of services is a few hundred kB
NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"  # usable as a process, container and DNS label


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


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
    # llama.cpp: false = one KV cache per slot (`--no-kv-unified`, every slot keeps `context` cells, concurrency ×
    # context reserved). Default: one unified KV pool the slots share, sized by the planner (vLLM's KV is always one
    # paged pool).
    kv_unified: bool | None = None
    allow_rpc: bool = False  # allow a llama.cpp layer split across hosts (over the network, llama.cpp RPC)
    allow_multinode: bool = False  # allow vLLM pipeline parallel across hosts (one Ray cluster over them)
    task: Literal["chat", "embeddings", "rerank"] | None = None  # what an LLM-file model serves (default chat)
    threads: int | None = Field(default=None, ge=1, le=4096)  # CPU threads for this service (llama.cpp -t)
    # Image services: sd-server's defaults, its low-memory setting (flash attention + tiled VAE decode: less memory,
    # slower images), or auto (the default where it fits, else low). See docs/plan-file.md.
    memory: MemoryChoice = "auto"

    _text = field_validator("model", "quant", "host", "kv_cache_dtype", mode="before")(text_or_number)

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


class HostEntry(_Strict):
    """What a plan knows about one host beyond its devices."""

    psu_w: float | None = Field(default=None, gt=0, le=100_000)  # the power supply's rating (lint GPX018)


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
    psu_w: float | None = Field(default=None, gt=0, le=100_000)  # the PSU of the machine (of every host by default)
    hosts: dict[str, HostEntry] = Field(default_factory=dict)  # per-host settings: {box-a: {psu_w: 1200}}

    @field_validator("hosts")
    @classmethod
    def _host_names(cls, value: dict[str, HostEntry]) -> dict[str, HostEntry]:
        bad = [name for name in value if not re.match(HOST_PATTERN, name)]
        if bad:
            raise ValueError(f"{bad[0]!r} is not a host name (letters, digits, '.', '_', '-')")
        return value

    def psu_w_of(self, host: str | None) -> float | None:
        """The declared PSU rating of a host (its `hosts:` entry, else the top-level `psu_w`)."""
        entry = self.hosts.get(host) if host is not None else None
        return entry.psu_w if entry is not None and entry.psu_w is not None else self.psu_w


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
    for key in ("prices", "hosts"):  # card and host names may read as numbers ("4090: ...")
        if isinstance(data.get(key), dict):
            data[key] = {str(k): v for k, v in data[key].items()}
    bad_keys = [k for k in _all_keys(data) if not isinstance(k, str)]
    if bad_keys:
        raise GpumixError(f"{source}: keys must be text, got {bad_keys[0]!r}", hint="quote the key")
    try:
        spec = PlanSpec.model_validate(data)
    except ValidationError as exc:
        raise validation_error(PlanSpec, exc, lines, source, hint="see docs/plan-file.md for the plan-file keys") from None
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
