"""The llama.cpp build, era and flags of a measurement row, read from its notes and source (issue 13)."""

from __future__ import annotations

import csv
from collections import Counter
from datetime import date
from pathlib import Path

import pytest

from gpumix.calibrate.engine_notes import engine_of_row
from gpumix.estimate.calibration import default_calibration
from gpumix.estimate.eras import (
    ERA_NAMES,
    GPUMIX_ERA,
    GPUMIX_LLAMA_CPP,
    GPUMIX_LLAMA_CPP_PYTHON,
    LLAMA_CPP_PYTHON_BUILDS,
    era_of_build,
    era_of_date,
)

SHARED = Path(__file__).resolve().parents[3] / "shared" / "calibration"
needs_shared = pytest.mark.skipif(not (SHARED / "measurements.csv").is_file(), reason="../shared/calibration absent")

XD = "https://github.com/XiongjieDai/GPU-Benchmarks-on-LLM-Inference/blob/aa72e0e/LLaMA%203/Gaming%20GPUs/3070_v3.ipynb"
XD_NOTES = ("size=4.58 GiB; llama.cpp build 4426e298 (2824); llama-bench defaults (n_batch=2048 n_ubatch=512 unless "
            "noted), ngl=99, no flash-attn; RunPod pod, CUDA 12.1.1, Ubuntu 22.04; snapshot May 2024; stdev=11.82")  # fmt: skip


@pytest.mark.parametrize(
    ("notes", "source", "build", "day", "era", "fa"),
    [
        (XD_NOTES, XD, 2824, None, "2024-H1", False),
        ("build 8e672ef (2023-11-21) per discussion description; Llama 2 7B",
         "https://github.com/ggml-org/llama.cpp/discussions/4167", None, date(2023, 11, 21), "2023", None),
        ("newer build dated 2024-11-12 with flash attention (over-time table in discussion description)",
         "https://github.com/ggml-org/llama.cpp/discussions/4167", None, date(2024, 11, 12), "mmq", True),
        ('Vulkan backend, "before" column (master at 2026-05), -fa 1 -mmp 0',
         "https://github.com/ggml-org/llama.cpp/pull/21024 (comment by 0cc4m, 2026-05-15)", None, date(2026, 5, 1),
         "mmq", True),
        ("RADV NAVI10 driver, -fa 0, ngl 100; stdev 0.65",
         "https://github.com/ggml-org/llama.cpp/pull/13324 (comment by daniandtheweb, 2025-05-08)", None,
         date(2025, 5, 8), "mmq", False),
        ("ROCm 6.0, Ryzen 5700X host; early-2024 build; stdev 5.60",
         "https://github.com/ggml-org/llama.cpp/pull/5835 (comment by Nindaleth, 2024-03-03)", None,
         date(2024, 3, 3), "2024-H1", None),
        ("host: Raspberry Pi CM5 16GB (PCIe x1 link); build f9ec8858e (7474); -fa 1 -mmp 0 -r 2",
         "https://github.com/geerlingguy/ai-benchmarks/issues/46", 7474, None, "mmq", True),
        ("llama-2-7b.Q4_0.gguf (3.56 GiB, 6.74B); llama-bench -ngl 99 -fa 0; commit 8a4280c",
         "https://github.com/ggml-org/llama.cpp/discussions/15013", None, date(2025, 5, 8), "mmq", False),
        ("Q8_0/Q4_0 only (8 GB machine, no F16); build 8e672ef",
         "https://github.com/ggml-org/llama.cpp/discussions/4167", None, date(2023, 11, 21), "2023", None),
        ("52-token prompt", "https://www.reddit.com/r/LocalLLaMA/comments/x", None, None, None, None),
    ],
)  # fmt: skip
def test_each_rule_dates_a_row(notes, source, build, day, era, fa) -> None:
    info = engine_of_row(notes, source)
    assert (info.build, info.day, info.era, info.flash_attention) == (build, day, era, fa), info.how
    assert info.how  # the rule that decided is always named


def test_flags_and_caution_marks() -> None:
    assert engine_of_row(XD_NOTES, XD).ubatch == 512
    assert engine_of_row("llama-bench -ub 256 -fa 1", "").ubatch == 256
    assert engine_of_row("-fa 1", "").caution is False
    anomalous = "8B F16 prompt-processing anomalously low vs 8B Q4_K_M (as published) - treat with caution"
    assert engine_of_row(anomalous, XD).caution is True
    assert engine_of_row("README lists tg4096 as 11.77 but treat >=2048 ctx results with caution", XD).caution


def test_era_boundaries_by_build_and_date() -> None:
    assert era_of_build(1560) == "2023" and era_of_build(2843) == "2024-H1" and era_of_build(3200) == "mmq"
    assert era_of_date(date(2023, 11, 21)) == "2023" and era_of_date(date(2024, 5, 6)) == "2024-H1"
    assert era_of_date(date(2024, 6, 24)) == "mmq" and era_of_date(date(2020, 1, 1)) == "2023"
    assert ERA_NAMES == ("2023", "2024-H1", "mmq")


def test_gpumix_predicts_for_the_era_of_the_llama_cpp_it_builds() -> None:
    """The pinned llama-cpp-python sdist must be in the build table, so a version bump forces an era decision."""
    from gpumix.launch.llamacpp import LLAMA_CPP_PYTHON_VERSION

    assert LLAMA_CPP_PYTHON_VERSION == GPUMIX_LLAMA_CPP_PYTHON
    assert LLAMA_CPP_PYTHON_VERSION in LLAMA_CPP_PYTHON_BUILDS
    assert GPUMIX_LLAMA_CPP.build == 11312 and GPUMIX_LLAMA_CPP.commit == "0c1e57098"
    assert GPUMIX_ERA == "mmq" == default_calibration().engine_era
    cal = default_calibration()
    assert cal.era_decode_factor[GPUMIX_ERA] == 1.0 and cal.era_prefill_factor[GPUMIX_ERA] == 1.0
    assert set(cal.era_decode_factor) == set(ERA_NAMES) == set(cal.era_prefill_factor)
    assert cal.at_era("2024-H1").era_factors()[0] == cal.era_decode_factor["2024-H1"]
    assert cal.at_era(None) is cal


@needs_shared
def test_every_published_source_gets_the_era_its_build_implies() -> None:
    eras: Counter[tuple[str, str | None]] = Counter()
    for name in ("measurements.csv", "multigpu.csv"):
        with (SHARED / name).open(newline="") as handle:
            for row in csv.DictReader(handle):
                source = "XiongjieDai" if "XiongjieDai" in row["source"] else row["source"].split("/")[-1][:12]
                eras[(source, engine_of_row(row["notes"], row["source"]).era)] += 1
    by_source: dict[str, set[str | None]] = {}
    for source, era in eras:
        by_source.setdefault(source, set()).add(era)
    assert by_source["XiongjieDai"] == {"2024-H1"}  # builds 2796-2843, May 2024
    assert by_source["15013"] == {"mmq"} and by_source["15021"] == {"mmq"} and by_source["10879"] == {"mmq"}
    assert by_source["4167"] == {"2023", "mmq"}  # the pinned 8e672ef, plus the one 2024-11-12 over-time row
    assert eras[("4167", "mmq")] == 1
    undated = sum(n for (_, era), n in eras.items() if era is None)
    assert undated <= 8  # the V100 kit and the MiniMax reddit post: MoE rows, named as undated
