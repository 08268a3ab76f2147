"""The GPU catalog: contents against published numbers, name resolution, device lists."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpumix.errors import GpumixError
from gpumix.hardware.catalog import (
    CATALOG_PATH,
    all_gpus,
    get_gpu,
    gpu_candidates,
    load_catalog,
    match_by_name_and_memory,
    parse_device_list,
    resolve_gpu,
)
from gpumix.units import GB, GiB

SHARED = Path(__file__).resolve().parents[3] / "shared"
REFERENCE_CSV = SHARED / "reference" / "gpus.csv"
CALIBRATION = SHARED / "calibration"

SCENARIO_CARDS = [
    "RTX 3060 12GB", "RTX 3090", "RTX 4090", "RTX 5060 Ti 16GB", "RTX 5090", "RTX PRO 6000 Blackwell",
    "A100 PCIe 40GB", "A100 SXM4 40GB", "A100 PCIe 80GB", "A100 SXM4 80GB", "H100 PCIe 80GB", "H100 SXM 80GB",
    "H200 SXM 141GB", "L4", "L40S", "A10G",
]  # fmt: skip


def test_catalog_keeps_all_74_reference_rows_with_their_names_and_figures():
    reference_rows = [s for s in all_gpus() if s.source.startswith("REFERENCE")]
    assert len(reference_rows) == 74
    if not REFERENCE_CSV.exists():
        pytest.skip(f"{REFERENCE_CSV} not present (fresh clone without the shared folder)")
    by_name = {s.name: s for s in all_gpus()}
    with REFERENCE_CSV.open(newline="") as fh:
        for row in csv.DictReader(fh):
            spec = by_name[row["gpu"]]  # exact display name kept
            assert spec.mem_bandwidth_gb_per_s == float(row["mem_bandwidth_gbs"])
            # the shared reference calls the GiB figure "vram_gb"; the catalog column is vram_gib
            assert spec.vram_bytes == (round(float(row["vram_gb"]) * GiB) if row["vram_gb"] else 0)
            assert spec.fp16_tflops == (float(row["fp16_tflops_dense"]) if row["fp16_tflops_dense"] else None)
            assert row["source"] in spec.source


@pytest.mark.parametrize("name", SCENARIO_CARDS)
def test_scenario_and_rental_cards_are_present_and_resolve_to_themselves(name):
    spec = resolve_gpu(name)
    assert spec.name == name
    assert spec.kind == "gpu" and spec.vram_bytes > 0 and spec.mem_bandwidth_gb_per_s > 0


def test_every_row_has_a_source_and_a_unique_slug_id():
    specs = all_gpus(include_cpu=True)
    assert len(specs) == len({s.id for s in specs})
    for spec in specs:
        assert len(spec.source) > 20, spec.name
        assert spec.id == spec.id.lower() and " " not in spec.id


def test_cpu_offload_rows_are_separate_from_gpus():
    cpus = [s for s in all_gpus(include_cpu=True) if s.kind == "cpu"]
    assert {s.mem_bandwidth_gb_per_s for s in cpus} >= {51.2, 89.6}
    assert all(s.vram_bytes == 0 for s in cpus)  # capacity is the machine's RAM
    assert not [s for s in all_gpus() if s.kind == "cpu"]


@pytest.mark.parametrize(
    ("name", "vram_gib", "bandwidth_gb_per_s"),
    [
        ("RTX 4090", 24, 1008),  # NVIDIA Ada whitepaper: 24 GB GDDR6X, 1008 GB/s
        ("RTX 3090", 24, 935.8),
        ("RTX 3060 12GB", 12, 360),
        ("RTX 5090", 32, 1792),
        ("RTX 5060 Ti 16GB", 16, 448),
        ("H100 SXM 80GB", 80, 3350),  # H100 datasheet: 3.35 TB/s
        ("H100 PCIe 80GB", 80, 2039),
        ("H200 SXM 141GB", 141, 4800),
        ("A100 PCIe 40GB", 40, 1555),
        ("L4", 24, 300),
        ("RTX PRO 6000 Blackwell", 96, 1792),
    ],
)
def test_published_capacity_and_bandwidth(name, vram_gib, bandwidth_gb_per_s):
    spec = resolve_gpu(name)
    assert spec.vram_bytes == vram_gib * GiB  # vendor "GB" of capacity stored as GiB (see data/README.md)
    assert spec.mem_bandwidth_gb_per_s == bandwidth_gb_per_s


def test_published_compute_and_link_figures():
    rtx4090 = resolve_gpu("RTX 4090")
    assert (rtx4090.fp16_tflops, rtx4090.bf16_tflops, rtx4090.compute_capability) == (330, 165.2, "8.9")
    assert rtx4090.fp8_supported and (rtx4090.pcie_gen, rtx4090.pcie_lanes) == (4, 16)
    h100 = resolve_gpu("H100 SXM")
    assert (h100.fp16_tflops, h100.fp8_tflops, h100.compute_capability) == (989.4, 1978.9, "9.0")
    slim = resolve_gpu("RTX 5060 Ti 16GB")
    assert (slim.pcie_gen, slim.pcie_lanes) == (5, 8)  # the 5060 Ti is PCIe 5.0 x8: matters for split transfers
    assert not resolve_gpu("RTX 3090").fp8_supported
    assert resolve_gpu("RTX 3090").compute_capability == "8.6"


def test_rental_prices_from_vision():
    prices = {n: resolve_gpu(n).price_gbp_per_month for n in ("4090", "5090", "RTX PRO 6000", "H100 PCIe", "5060 Ti")}
    assert prices == {"4090": 575, "5090": 900, "RTX PRO 6000": 2200, "H100 PCIe": 2800, "5060 Ti": 150}


def test_fp8_support_follows_architecture():
    for spec in all_gpus():
        expected = spec.arch.startswith(("Ada Lovelace", "Hopper", "Blackwell", "RDNA 4"))
        assert spec.fp8_supported == expected, spec.name
        if spec.fp8_tflops is not None:
            assert spec.fp8_supported


@pytest.mark.parametrize(
    "query", ["4090", "rtx4090", "RTX 4090", "rtx-4090", "  RTX   4090 ", "NVIDIA GeForce RTX 4090", "GeForce RTX 4090"]
)
def test_forgiving_names_give_one_card(query):
    assert resolve_gpu(query).id == "rtx-4090"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("3060", "RTX 3060 12GB"),
        ("5060 Ti", "RTX 5060 Ti 16GB"),
        ("NVIDIA GeForce RTX 5060 Ti", "RTX 5060 Ti 16GB"),
        ("h100 sxm", "H100 SXM 80GB"),
        ("NVIDIA H100 80GB HBM3", "H100 SXM 80GB"),  # NVML's name for the SXM card
        ("NVIDIA H100 PCIe", "H100 PCIe 80GB"),
        ("NVIDIA A100-SXM4-40GB", "A100 SXM4 40GB"),
        ("Tesla V100-SXM2-32GB", "Tesla V100 SXM2 32GB"),
        ("H200", "H200 SXM 141GB"),
        ("RTX PRO 6000", "RTX PRO 6000 Blackwell"),
        ("7900 XTX", "Radeon RX 7900 XTX"),
        ("L40", "L40"),
        ("L40S", "L40S"),
        ("A10", "A10"),
        ("DDR5-5600", "CPU DDR5-5600 dual-channel"),
    ],
)
def test_resolution_cases(query, expected):
    assert resolve_gpu(query).name == expected


@pytest.mark.parametrize(
    ("query", "candidates"),
    [
        ("H100", {"H100 PCIe 80GB", "H100 SXM 80GB"}),
        ("A100 80GB", {"A100 PCIe 80GB", "A100 SXM4 80GB"}),
        ("A100", {"A100 PCIe 40GB", "A100 SXM4 40GB", "A100 PCIe 80GB", "A100 SXM4 80GB"}),
        ("M2 Ultra", {"Apple M2 Ultra (60-core GPU)", "Apple M2 Ultra (76-core GPU)"}),
    ],
)
def test_ambiguous_names_list_the_candidates(query, candidates):
    with pytest.raises(GpumixError, match="ambiguous") as err:
        resolve_gpu(query)
    for name in candidates:
        assert repr(name) in err.value.message
    assert {s.name for s in gpu_candidates(query)} == candidates


def test_unknown_name_suggests_the_closest():
    with pytest.raises(GpumixError, match="unknown GPU 'RTX 4900'") as err:
        resolve_gpu("RTX 4900")
    assert "'RTX 4090'" in err.value.message
    assert err.value.hint
    with pytest.raises(GpumixError, match="empty GPU name"):
        resolve_gpu("  --  ")


def test_get_gpu_by_id():
    assert get_gpu("h100-sxm-80gb").name == "H100 SXM 80GB"
    with pytest.raises(GpumixError, match="no GPU with catalog id"):
        get_gpu("rtx-9090")


def test_match_by_name_and_memory_uses_size_to_tell_variants_apart():
    assert match_by_name_and_memory("NVIDIA GeForce RTX 3060", 12288 * 2**20).name == "RTX 3060 12GB"
    assert match_by_name_and_memory("NVIDIA GeForce RTX 3060", 8192 * 2**20) is None  # the 8 GB card isn't listed
    assert match_by_name_and_memory("NVIDIA H100 80GB HBM3", 81559 * 2**20).name == "H100 SXM 80GB"


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("2x RTX 3090", ["RTX 3090"] * 2),
        ("RTX 4090 + RTX 5060 Ti 16GB", ["RTX 4090", "RTX 5060 Ti 16GB"]),
        ("RTX 3090, RTX 3060 12GB", ["RTX 3090", "RTX 3060 12GB"]),
        ("4090 x2", ["RTX 4090"] * 2),
        ("2 x 4090 + 3060", ["RTX 4090", "RTX 4090", "RTX 3060 12GB"]),
        ("4x H100 PCIe 80GB", ["H100 PCIe 80GB"] * 4),
        ("2x Tesla V100 SXM2 16GB (NVLink)", ["Tesla V100 SXM2 16GB"] * 2),  # note from multigpu.csv ignored
        ("Tesla K80 (one GK210)", ["Tesla K80 (one GK210)"]),  # parentheses that are part of the name
    ],
)
def test_parse_device_list(text, names):
    assert [s.name for s in parse_device_list(text)] == names


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "cannot read device list"),
        ("4090 +", "cannot read device list"),
        ("0x 4090", "between 1 and 64"),
        ("2x H100", "ambiguous"),
        ("2x RTX 9999", "unknown GPU"),
        ("40x 4090 + 40x 3090", "at most 64"),
    ],
)
def test_parse_device_list_errors(text, message):
    with pytest.raises(GpumixError, match=message):
        parse_device_list(text)


def test_calibration_gpu_names_all_resolve():
    files = [CALIBRATION / "measurements.csv", CALIBRATION / "multigpu.csv"]
    if not all(f.exists() for f in files):
        pytest.skip("shared calibration folder not present")
    with files[0].open(newline="") as fh:
        for row in csv.DictReader(fh):
            assert resolve_gpu(row["gpu"]).name == row["gpu"]
    with files[1].open(newline="") as fh:
        for row in csv.DictReader(fh):
            assert len(parse_device_list(row["gpus"])) == int(row["n_gpus"])


def test_broken_catalog_file_names_the_line(tmp_path):
    good = CATALOG_PATH.read_text().splitlines()
    at = next(i for i, line in enumerate(good) if line.startswith("rtx-4090,"))
    broken = list(good)
    broken[at] = broken[at].replace(",1008,", ",fast,")
    path = tmp_path / "gpus.csv"
    path.write_text("\n".join(broken) + "\n")
    with pytest.raises(GpumixError, match=rf"gpus.csv line {at + 1}: column 'mem_bandwidth_gbs' is not a number"):
        load_catalog(path)
    dup = tmp_path / "dup.csv"
    dup.write_text("\n".join(good + [good[at]]) + "\n")
    with pytest.raises(GpumixError, match=rf"dup.csv line {len(good) + 1}: duplicate id 'rtx-4090'"):
        load_catalog(dup)
    no_columns = tmp_path / "cols.csv"
    no_columns.write_text("id,name\nx,y\n")
    with pytest.raises(GpumixError, match="missing columns"):
        load_catalog(no_columns)


def test_gpu_catalog_rows_are_in_decimal_gb_per_s_and_plausible():
    for spec in all_gpus():
        assert 50 <= spec.mem_bandwidth_gb_per_s <= 10_000, spec.name
        if spec.vram_bytes:
            assert 4 * GB <= spec.vram_bytes <= 256 * GiB, spec.name


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=40))
def test_garbage_names_give_a_card_or_a_gpumix_error(text):
    for parse in (resolve_gpu, parse_device_list):
        try:
            parse(text)
        except GpumixError as exc:
            assert exc.message


def test_the_catalog_capacity_column_says_its_unit():
    """The column holds GiB and is named so (`vram_gib`); an RTX 4090's 24 is 24 × 2^30 bytes."""
    header = next(line for line in Path(str(CATALOG_PATH)).read_text().splitlines() if not line.startswith("#"))
    assert "vram_gib" in header.split(",") and "vram_gb" not in header.split(",")
    assert resolve_gpu("RTX 4090").vram_bytes == 24 * GiB
