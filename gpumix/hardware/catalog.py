"""The GPU catalog (data/gpus.csv) and forgiving, unambiguous name resolution.

`resolve_gpu("4090")`, `resolve_gpu("rtx4090")` and `resolve_gpu("NVIDIA GeForce RTX 4090")` (NVML's name) all give
the RTX 4090; `resolve_gpu("H100")` is ambiguous (PCIe vs SXM) and raises a GpumixError listing the candidates.

Capacity convention: the `vram_gib` column is GiB, `vram_bytes = vram_gib * 2**30`. Vendors print "24 GB" but memory
capacity is binary (an RTX 4090 has 24 GiB; NVML reports 24564 MiB total). NVML's total is 0-1 % below that on HBM cards (driver/ECC reservations) and
free memory is lower still, so plans on a real machine use discovered numbers (see discovery.py).
"""

from __future__ import annotations

import csv
import functools
import io
import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from gpumix.errors import GpumixError
from gpumix.hardware.names import NameIndex, NameRules
from gpumix.hardware.spec import GpuSpec
from gpumix.kinds import DeviceKind
from gpumix.units import gib_to_bytes

CATALOG_PATH = Path(__file__).parent / "data" / "gpus.csv"

# Words that never tell two cards apart: dropped from queries and names alike. Brand words a user may leave out
# ("4090" for "RTX 4090") without that making the name ambiguous; a memory size ("12GB") may be left out too.
GPU_NAME_RULES = NameRules(
    what="GPU",
    list_hint="`gpumix gpus` lists the catalog",
    noise=frozenset({"nvidia", "geforce", "amd", "intel"}),
    optional=frozenset({"rtx", "gtx", "radeon", "rx", "tesla", "instinct"}),
    unknown_hint="`gpumix gpus` lists the catalog; a card not there can be described in a devices file",
)


@dataclass(frozen=True)
class GpuCatalog:
    """All catalog rows plus an index from normalised names/aliases/ids to ids (gpumix.hardware.names)."""

    specs: tuple[GpuSpec, ...]
    path: Path

    @functools.cached_property
    def _index(self) -> NameIndex[GpuSpec]:
        return NameIndex(items=self.specs, rules=GPU_NAME_RULES)

    @property
    def by_id(self) -> dict[str, GpuSpec]:
        return self._index.by_id

    def candidates(self, query: str) -> list[GpuSpec]:
        """Cards the query could mean, best first; one element when the name is unambiguous."""
        return self._index.candidates(query)

    def suggestions(self, query: str) -> list[str]:
        return self._index.suggestions(query)

    def resolve(self, query: str) -> GpuSpec:
        return self._index.resolve(query)


# ---------------------------------------------------------------------------------------------- loading the CSV

_REQUIRED_COLUMNS = ("id", "name", "kind", "vendor", "arch", "vram_gib", "mem_bandwidth_gbs", "source")


def _number(row: dict[str, str], column: str, where: str) -> float | None:
    text = (row.get(column) or "").strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise GpumixError(f"{where}: column {column!r} is not a number: {text!r}") from None


def _int(row: dict[str, str], column: str, where: str) -> int | None:
    value = _number(row, column, where)
    return None if value is None else int(value)


def _bool(row: dict[str, str], column: str, where: str) -> bool:
    text = (row.get(column) or "").strip().lower()
    if text in ("", "false", "no", "0"):
        return False
    if text in ("true", "yes", "1"):
        return True
    raise GpumixError(f"{where}: column {column!r} must be true/false, got {text!r}")


_DEVICE_KIND: TypeAdapter[DeviceKind] = TypeAdapter(DeviceKind)


def _spec_from_row(row: dict[str, str], where: str) -> GpuSpec:
    vram_gib = _number(row, "vram_gib", where)
    bandwidth = _number(row, "mem_bandwidth_gbs", where)
    if bandwidth is None:
        raise GpumixError(f"{where}: column 'mem_bandwidth_gbs' is empty")
    aliases = tuple(a.strip() for a in (row.get("aliases") or "").split(";") if a.strip())
    try:
        return GpuSpec(
            id=row["id"].strip(),
            name=row["name"].strip(),
            kind=_DEVICE_KIND.validate_python(row["kind"].strip() or "gpu"),
            vendor=row["vendor"].strip(),
            arch=row["arch"].strip(),
            compute_capability=(row.get("compute_capability") or "").strip() or None,
            vram_bytes=gib_to_bytes(vram_gib) if vram_gib is not None else 0,  # 0 = not published / the machine's RAM
            mem_bandwidth_gb_per_s=bandwidth,
            fp16_tflops=_number(row, "fp16_tflops", where),
            bf16_tflops=_number(row, "bf16_tflops", where),
            fp8_tflops=_number(row, "fp8_tflops", where),
            int8_tops=_number(row, "int8_tops", where),
            fp32_tflops=_number(row, "fp32_tflops", where),
            compute_units=_int(row, "compute_units", where),
            boost_clock_mhz=_number(row, "boost_clock_mhz", where),
            fp16_tflops_derived=_number(row, "fp16_tflops_derived", where),
            fp8_supported=_bool(row, "fp8_supported", where),
            pcie_gen=_int(row, "pcie_gen", where),
            pcie_lanes=_int(row, "pcie_lanes", where),
            tdp_w=_number(row, "tdp_w", where),
            price_gbp_per_month=_number(row, "price_gbp_per_month", where),
            price_gbp_purchase=_number(row, "price_gbp_purchase", where),
            aliases=aliases,
            source=row["source"].strip(),
        )
    except ValidationError as exc:
        raise GpumixError(f"{where}: invalid row: {exc.errors()[0]['msg']}") from None


def read_catalog_rows(path: Path, required: tuple[str, ...], what: str) -> list[tuple[str, dict[str, str]]]:
    """A catalog CSV's rows (lines starting with '#' are comments), each with where it is ("gpus.csv line 12") for
    error messages; `what` names the catalog in read errors ("GPU catalog")."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    except OSError as exc:
        raise GpumixError(f"cannot read {what} {path}: {exc.strerror}") from None
    numbered = [(n, line) for n, line in enumerate(lines, start=1) if not line.lstrip().startswith("#")]
    reader = csv.DictReader(io.StringIO("".join(line for _, line in numbered)))
    missing = [c for c in required if c not in (reader.fieldnames or [])]
    if missing:
        raise GpumixError(f"{what} {path}: missing columns {missing}")
    # DictReader rows follow the header; map each back to its line number in the file for error messages.
    return [(f"{path.name} line {numbered[i + 1][0]}", row) for i, row in enumerate(reader)]


@functools.cache
def load_catalog(path: Path = CATALOG_PATH) -> GpuCatalog:
    """Read and check the catalog once (cached per path)."""
    specs: list[GpuSpec] = []
    seen: set[str] = set()
    for where, row in read_catalog_rows(path, _REQUIRED_COLUMNS, "GPU catalog"):
        spec = _spec_from_row(row, where)
        if spec.id in seen:
            raise GpumixError(f"{where}: duplicate id {spec.id!r}")
        seen.add(spec.id)
        specs.append(spec)
    return GpuCatalog(specs=tuple(specs), path=path)


# ------------------------------------------------------------------------------------------------- public API


def all_gpus(include_cpu: bool = False) -> list[GpuSpec]:
    """Every catalog card, in file order; `include_cpu` adds the CPU/RAM offload rows (kind="cpu", vram_bytes=0)."""
    return [s for s in load_catalog().specs if include_cpu or s.kind == "gpu"]


def get_gpu(gpu_id: str) -> GpuSpec:
    """Exact lookup by catalog id (e.g. from a saved Plan's `catalog_id`)."""
    try:
        return load_catalog().by_id[gpu_id]
    except KeyError:
        raise GpumixError(f"no GPU with catalog id {gpu_id!r}", hint="`gpumix gpus` lists the ids") from None


def resolve_gpu(name: str) -> GpuSpec:
    """The one catalog card `name` means; GpumixError (with candidates or closest names) otherwise."""
    return load_catalog().resolve(name)


def gpu_candidates(name: str) -> list[GpuSpec]:
    """All cards `name` could mean (empty when none); `resolve_gpu` succeeds iff this has one element."""
    return load_catalog().candidates(name)


def match_by_name_and_memory(name: str, total_bytes: int) -> GpuSpec | None:
    """Catalog card for a name reported by a driver, using memory size to pick between variants.

    NVML says "NVIDIA GeForce RTX 3060" for both the 8 GB and 12 GB cards: a candidate is kept only when its VRAM is
    within 10 % of what the driver reports. None when nothing fits.
    """
    fits = [s for s in gpu_candidates(name) if s.vram_bytes and abs(s.vram_bytes - total_bytes) <= 0.10 * s.vram_bytes]
    return fits[0] if len(fits) == 1 else None


# "2x RTX 3090", "2 x RTX 3090", "2×3090" - but not "3090 x2", which is the suffix form.
_COUNT_PREFIX = re.compile(r"^\s*(\d+)(?:\s*[x×*]\s+|[x×*]\s*)(.+)$", re.IGNORECASE)
_COUNT_SUFFIX = re.compile(r"^(.+?)\s+[x×*]\s*(\d+)\s*$", re.IGNORECASE)
_TRAILING_NOTE = re.compile(r"\s*\([^()]*\)\s*$")
_MAX_DEVICES = 64


def _resolve_with_note(name: str) -> GpuSpec:
    """Resolve, retrying without a trailing '(...)' note like '(NVLink)' when the full text is not a card name."""
    try:
        return resolve_gpu(name)
    except GpumixError:
        stripped = _TRAILING_NOTE.sub("", name)
        if stripped and stripped != name and gpu_candidates(stripped):
            return resolve_gpu(stripped)
        raise


def parse_device_list(text: str) -> list[GpuSpec]:
    """'2x RTX 3090' -> [3090, 3090]; 'RTX 4090 + RTX 5060 Ti 16GB' -> [4090, 5060 Ti]. Also ',' and 'RTX 3090 x2'.

    A trailing note in parentheses ('2x Tesla V100 SXM2 16GB (NVLink)') is ignored when it is not part of a name.
    """
    parts = [p.strip() for p in re.split(r"[+,;]", text)]
    if not text.strip() or any(not p for p in parts):
        raise GpumixError(f"cannot read device list {text!r}", hint="write e.g. '2x RTX 3090' or 'RTX 4090 + RTX 3060'")
    specs: list[GpuSpec] = []
    for part in parts:
        count, name = 1, part
        if match := _COUNT_PREFIX.match(part):
            count, name = int(match.group(1)), match.group(2)
        elif match := _COUNT_SUFFIX.match(part):
            name, count = match.group(1), int(match.group(2))
        if not 1 <= count <= _MAX_DEVICES:
            raise GpumixError(f"device count {count} in {part!r} must be between 1 and {_MAX_DEVICES}")
        specs.extend([_resolve_with_note(name.strip())] * count)
    if len(specs) > _MAX_DEVICES:
        raise GpumixError(f"device list {text!r} names {len(specs)} devices; at most {_MAX_DEVICES}")
    return specs
