"""Parse llama-server's own memory accounting from its log (engines.md §1.3).

Two sources: the `memory breakdown [MiB]` table printed at exit with `-lv 4` (prefix `common_memory_breakdown_print:`
now, `llama_memory_breakdown_print:` in older builds), and the `llama_kv_cache: size = ...` lines printed while
loading. Values in MiB as llama.cpp prints them (MiB = 2**20 bytes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from gpumix.units import MiB

_TABLE_LINE = re.compile(r"\w*memory_breakdown_print: (\|.*\|)\s*$")
_DEVICE_ROW = re.compile(
    r"\|\s+-\s+(?P<name>\S+)(?:\s+\((?P<desc>[^|]*?)\))?\s*\|\s*(?P<total>\d+)\s*=\s*(?P<free>\d+)\s*\+\s*"
    r"\(\s*(?P<self>\d+)\s*=\s*(?P<model>\d+)\s*\+\s*(?P<context>\d+)\s*\+\s*(?P<compute>\d+)\s*\)\s*\+\s*"
    r"(?P<unaccounted>-?\d+)\s*\|"
)
_HOST_ROW = re.compile(
    r"\|\s+-\s+(?P<name>[^|(]+?)\s*\|\s*(?P<self>\d+)\s*=\s*(?P<model>\d+)\s*\+\s*(?P<context>\d+)\s*\+\s*"
    r"(?P<compute>\d+)\s*\|"
)
_KV_SIZE = re.compile(
    r"llama_kv_cache: size =\s*(?P<size>[\d.]+) MiB \(\s*(?P<cells>\d+) cells,\s*(?P<layers>\d+) layers,\s*"
    r"(?P<seqs>\d+)/(?P<seqs_max>\d+) seqs\), K \((?P<k_type>\w+)\):\s*(?P<k>[\d.]+) MiB, V \((?P<v_type>\w+)\):\s*"
    r"(?P<v>[\d.]+) MiB"
)
_BUFFER = re.compile(r"(?P<what>model|compute|output) buffer size =\s*(?P<mib>[\d.]+) MiB")
_BUFFER_NAME = re.compile(r":\s+(?P<name>\S+)\s+(?:model|compute|output) buffer size")


@dataclass(frozen=True)
class MemoryRow:
    name: str  # "CUDA0", "Host", "CPU_REPACK", "RPC0[127.0.0.1:50052]"
    description: str | None
    self_mib: int
    model_mib: int
    context_mib: int  # KV cache / recurrent state
    compute_mib: int
    total_mib: int | None = None  # device rows only
    free_mib: int | None = None
    unaccounted_mib: int | None = None

    @property
    def is_device(self) -> bool:
        return self.total_mib is not None

    @property
    def self_bytes(self) -> int:
        return self.self_mib * MiB


@dataclass(frozen=True)
class KvCacheLine:
    size_mib: float
    cells: int
    layers: int
    seqs: int
    k_type: str
    k_mib: float
    v_type: str
    v_mib: float


@dataclass(frozen=True)
class LlamaMemoryReport:
    rows: list[MemoryRow] = field(default_factory=list)  # the last breakdown table in the log
    kv_caches: list[KvCacheLine] = field(default_factory=list)  # one per cache (SWA models have two)
    model_buffers_mib: dict[str, float] = field(default_factory=dict)  # buffer name → MiB
    compute_buffers_mib: dict[str, float] = field(default_factory=dict)
    # llama_context's output buffer (logits/embeddings handed to the caller): allocated, but not in the table
    output_buffers_mib: dict[str, float] = field(default_factory=dict)

    @property
    def kv_cache_mib(self) -> float:
        return sum(kv.size_mib for kv in self.kv_caches)

    @property
    def host_self_mib(self) -> int:
        """model + context + compute of the host rows (Host, CPU_REPACK, ...): the CPU's share."""
        return sum(row.self_mib for row in self.rows if not row.is_device)

    @property
    def output_buffer_mib(self) -> float:
        return sum(self.output_buffers_mib.values())

    @property
    def self_mib(self) -> int:
        """Everything llama.cpp allocated itself (model + context + compute) over all rows."""
        return sum(row.self_mib for row in self.rows)

    def row(self, name: str) -> MemoryRow:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(name)


def parse_llama_memory_breakdown(log_text: str) -> LlamaMemoryReport:
    """Rows of the last `memory breakdown` table, KV cache sizes of the last load, and buffer sizes."""
    tables: list[list[MemoryRow]] = []
    kv_caches: list[KvCacheLine] = []
    model_buffers: dict[str, float] = {}
    compute_buffers: dict[str, float] = {}
    output_buffers: dict[str, float] = {}
    for line in log_text.splitlines():
        table = _TABLE_LINE.search(line)
        if table:
            cells = table.group(1)
            if "memory breakdown" in cells:
                tables.append([])
            elif tables and (row := _parse_row(cells)) is not None:
                tables[-1].append(row)
            continue
        if "load_tensors:" in line and "model buffer size" in line:
            _add_buffer(line, model_buffers)
        elif "compute buffer size" in line:
            _add_buffer(line, compute_buffers)
        elif "output buffer size" in line:
            _add_buffer(line, output_buffers)
        elif kv := _KV_SIZE.search(line):
            kv_caches.append(
                KvCacheLine(float(kv["size"]), int(kv["cells"]), int(kv["layers"]), int(kv["seqs_max"]), kv["k_type"],
                            float(kv["k"]), kv["v_type"], float(kv["v"]))  # fmt: skip
            )
    return LlamaMemoryReport(tables[-1] if tables else [], kv_caches, model_buffers, compute_buffers, output_buffers)


def _add_buffer(line: str, into: dict[str, float]) -> None:
    size, name = _BUFFER.search(line), _BUFFER_NAME.search(line)
    if size and name:
        into[name["name"]] = float(size["mib"])


def _parse_row(cells: str) -> MemoryRow | None:
    if device := _DEVICE_ROW.match(cells):
        return MemoryRow(
            name=device["name"], description=device["desc"], self_mib=int(device["self"]), model_mib=int(device["model"]),
            context_mib=int(device["context"]), compute_mib=int(device["compute"]), total_mib=int(device["total"]),
            free_mib=int(device["free"]), unaccounted_mib=int(device["unaccounted"]),
        )  # fmt: skip
    if host := _HOST_ROW.match(cells):
        return MemoryRow(
            name=host["name"].strip(), description=None, self_mib=int(host["self"]), model_mib=int(host["model"]),
            context_mib=int(host["context"]), compute_mib=int(host["compute"]),
        )  # fmt: skip
    return None
