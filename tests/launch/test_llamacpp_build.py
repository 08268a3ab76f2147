"""The llama.cpp build asks only for instruction sets this machine's CPU has (an AVX-512 build died with SIGILL on
an AMD EPYC VM without AVX-512)."""

from __future__ import annotations

from pathlib import Path

from gpumix.launch.llamacpp import LLAMA_CPP_PYTHON_VERSION, BuildOptions, cpu_feature_flags

ZEN3 = "flags\t\t: fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2 vaes vpclmulqdq\n"
SKYLAKE_X = ZEN3.rstrip() + " avx512f avx512dq avx512cd avx512bw avx512vl\n"


def _cpuinfo(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text("processor\t: 0\n" + text + "\nprocessor\t: 1\n" + text)
    return path


def test_no_avx512_flag_without_avx512(tmp_path: Path) -> None:
    flags = cpu_feature_flags(_cpuinfo(tmp_path, ZEN3))
    assert "-DGGML_AVX512=ON" not in flags
    assert {"-DGGML_NATIVE=OFF", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON"} <= set(flags)


def test_avx512_needs_every_subset_the_compiler_switches_imply(tmp_path: Path) -> None:
    assert "-DGGML_AVX512=ON" in cpu_feature_flags(_cpuinfo(tmp_path, SKYLAKE_X))
    partial = SKYLAKE_X.replace(" avx512bw", "")
    assert "-DGGML_AVX512=ON" not in cpu_feature_flags(_cpuinfo(tmp_path, partial))


def test_unknown_cpu_builds_the_baseline(tmp_path: Path) -> None:
    assert cpu_feature_flags(tmp_path / "missing") == ("-DGGML_NATIVE=OFF",)


def test_this_machine_build_key_follows_its_features() -> None:
    options = BuildOptions(backend="cpu")
    assert set(cpu_feature_flags()) <= set(options.cmake_flags)
    assert options.key.startswith(f"{LLAMA_CPP_PYTHON_VERSION}-cpu-")
