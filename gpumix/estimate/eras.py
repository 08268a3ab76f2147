"""llama.cpp releases grouped into eras of kernel efficiency (pure data: no file or network reads).

The same GPU runs the same model measurably faster on a newer llama.cpp: llama.cpp discussion #4167's over-time
table has an M2 Ultra (76-core GPU) decoding Llama 2 7B Q4_0 at 94.3 tok/s on the discussion's pinned build
8e672ef (2023-11-21) and at 108.8 tok/s on a build of 2024-11-12 (+15 % on identical hardware). The published
measurements gpumix is fitted on come from builds of late 2023 to mid 2026, so the fit gives each era a decode and
a prefill efficiency factor (`Calibration.era_decode_factor` / `era_prefill_factor`), and predicts for the era of
the llama.cpp gpumix itself builds (`GPUMIX_LLAMA_CPP`). Eras are bounded where kernel changes that move
throughput landed, not where they fit the data best:

- "2023": builds before ~b2000 (January 2024). Metal and CUDA kernels as in the #4167 reference build 8e672ef;
  no flash attention, no CUDA graphs, quantized prefill on CUDA dequantizes to FP16 for cuBLAS
  (PR #3412, 2023-09-30).
- "2024-H1": ~b2000 to ~b3200 (to 2024-06-23). Flash attention exists (PR #5021, merged 2024-04-30) but is off by
  default, CUDA graphs arrive (PR #6766, opened 2024-04-19, merged early May 2024); quantized prefill on CUDA is
  still dequantize + FP16 cuBLAS. The XiongjieDai notebooks (builds 2796-2843, May 2024) are here.
- "mmq": ~b3200 (2024-06-24) onwards. CUDA uses its own quantized matrix multiplication (MMQ) with int8 tensor
  cores by default instead of FP16 cuBLAS (PRs #7676, #7860, default from #8075 merged 2024-06-24), which lifts
  quantized prefill on Turing and newer; later kernel work (Vulkan coopmat, fused ops) is inside this era. The
  scoreboards of discussions #10879 (Vulkan), #15013 (CUDA) and #15021 (ROCm) and gpumix's own build are here.

Build numbers are llama.cpp's `bNNNN` release numbers (commit count). Dates of builds, for rows that give a date
instead: b2474 = 2024-03-23 (ollama PR #3307), b2761 = 2024-04-29 (ollama PR #4036), b2793 = 2024-05-06,
b3917 = 2024-10-15 (llama.cpp issue #9881), b4007 = 2024-11-01, b5062 = 2025-04-07, b7474 = 2025-12-18
(geerlingguy/ai-benchmarks issue #46), b10760 = 2026-09-02, b11312 = 2026-10-01. Era boundaries by build are
therefore approximate to a few hundred builds; no measured row lies near one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date


@dataclass(frozen=True)
class EngineEra:
    name: str
    first_build: int  # first llama.cpp build number (bNNNN) of the era (approximate, see module doc)
    first_date: date  # first day of the era
    reason: str


ERAS: tuple[EngineEra, ...] = (
    EngineEra("2023", 0, date(2023, 1, 1),
              "#4167 reference build 8e672ef: no flash attention, no CUDA graphs, quantized prefill via FP16 cuBLAS"),
    EngineEra("2024-H1", 2000, date(2024, 1, 15),
              "flash attention (PR #5021) off by default, CUDA graphs (PR #6766); prefill still dequantize + cuBLAS"),
    EngineEra("mmq", 3200, date(2024, 6, 24),
              "MMQ with int8 tensor cores by default on CUDA (PRs #7676, #7860, #8075) and later kernel work"),
)  # fmt: skip
ERA_NAMES: tuple[str, ...] = tuple(e.name for e in ERAS)


@dataclass(frozen=True)
class LlamaCppBuild:
    build: int
    commit: str
    date: date


# The llama.cpp each llama-cpp-python sdist vendors (gpumix builds llama.cpp from that sdist: gpumix.launch.llamacpp
# LLAMA_CPP_PYTHON_VERSION). 0.3.36: its CHANGELOG says "update llama.cpp to ggml-org/llama.cpp@0c1e57098", which
# is release b11312 of 2026-10-01. A test fails when the pinned sdist is not in this table.
LLAMA_CPP_PYTHON_BUILDS: dict[str, LlamaCppBuild] = {
    "0.3.36": LlamaCppBuild(build=11312, commit="0c1e57098", date=date(2026, 10, 1)),
}
GPUMIX_LLAMA_CPP_PYTHON = "0.3.36"
GPUMIX_LLAMA_CPP = LLAMA_CPP_PYTHON_BUILDS[GPUMIX_LLAMA_CPP_PYTHON]


def era_of_build(build: int) -> str:
    """The era of llama.cpp release `build` (bNNNN)."""
    return [e.name for e in ERAS if build >= e.first_build][-1]


def era_of_date(day: date) -> str:
    """The era of a llama.cpp built on `day`."""
    return ([e.name for e in ERAS if day >= e.first_date] or [ERAS[0].name])[-1]


GPUMIX_ERA = era_of_build(GPUMIX_LLAMA_CPP.build)
