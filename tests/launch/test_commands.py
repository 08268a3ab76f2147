from __future__ import annotations

import re
import shlex
import subprocess

import pytest

from gpumix.errors import GpumixError
from gpumix.launch.commands import render_plan
from gpumix.launch.script import render_script
from gpumix.plan.planner import plan_services
from gpumix.plan.result import Plan
from gpumix.plan.spec import parse_plan_text


def _by_name(plan: Plan):
    return {spec.name: spec for spec in render_plan(plan, base_port=9000)}


def _flag(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_every_process_is_pinned_to_exactly_its_planned_gpus(hybrid_plan):
    specs = _by_name(hybrid_plan)
    expected = {"chat": "0", "sdxl": "1", "whisper": "1", "embed": "1", "rerank": "1", "guard-chat": "1",
                "big": "0,1", "small-0": "0", "small-1": "1", "cpu-embed": ""}  # fmt: skip
    assert {name: spec.env["CUDA_VISIBLE_DEVICES"] for name, spec in specs.items()} == expected
    assert all(spec.env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID" for spec in specs.values())


def test_ports_are_deterministic_from_the_base_port(hybrid_plan):
    assert [spec.port for spec in render_plan(hybrid_plan, base_port=9000)] == list(range(9000, 9010))


def test_uuids_are_used_when_the_plan_has_them(hybrid_plan):
    devices = [d.model_copy(update={"uuid": f"GPU-{d.index}abc"}) if d.kind == "gpu" else d for d in hybrid_plan.devices]
    plan = hybrid_plan.model_copy(update={"devices": devices})
    assert _by_name(plan)["big"].env["CUDA_VISIBLE_DEVICES"] == "GPU-0abc,GPU-1abc"
    assert _by_name(plan)["big"].gpu_ids == ["GPU-0abc", "GPU-1abc"]


def test_llama_layer_split_flags(hybrid_plan):
    argv = _by_name(hybrid_plan)["big"].argv
    assert _flag(argv, "-sm") == "layer"
    assert _flag(argv, "-ts") == "48,32"
    assert _flag(argv, "-dev") == "CUDA0,CUDA1"  # counted after CUDA_VISIBLE_DEVICES
    assert _flag(argv, "-np") == "2"
    assert _flag(argv, "-c") == str(4096 * 2)  # per-slot context × slots (no unified KV with explicit -np)
    assert _flag(argv, "-ctk") == _flag(argv, "-ctv") == "q8_0"
    assert _flag(argv, "-fa") == "on"  # quantised V cache needs flash attention
    assert _flag(argv, "--host") == "127.0.0.1"
    assert _flag(argv, "-a") == "big"
    assert "--metrics" in argv


def test_replica_mode_runs_one_single_gpu_process_per_device(hybrid_plan):
    specs = _by_name(hybrid_plan)
    for name in ("small-0", "small-1"):
        argv = specs[name].argv
        assert _flag(argv, "-sm") == "none" and _flag(argv, "-dev") == "CUDA0" and "-ts" not in argv
    assert specs["small-0"].service == specs["small-1"].service == "small"


def test_cpu_embedding_service(hybrid_plan):
    argv = _by_name(hybrid_plan)["cpu-embed"].argv
    assert argv[argv.index("--embeddings") + 1 : argv.index("--embeddings") + 3] == ["--pooling", "mean"]
    assert _flag(argv, "-ngl") == "0" and _flag(argv, "-dev") == "none" and _flag(argv, "-t") == "2"
    assert argv[_flag_index(argv, "-m")].endswith("gemma-3-270m-q4_k_m.gguf")  # pypi: ref resolved by assemble()


def _flag_index(argv: list[str], flag: str) -> int:
    return argv.index(flag) + 1


def test_vllm_flags(hybrid_plan):
    spec = _by_name(hybrid_plan)["chat"]
    assert spec.argv[1:3] == ["serve", "meta-llama/Llama-3.1-8B-Instruct"]
    assert _flag(spec.argv, "--max-model-len") == "8192"
    assert _flag(spec.argv, "--max-num-seqs") == "16"
    # The plan's 9 GiB of KV for 8192 x 16 tokens, plus vLLM's null block (16 tokens on CUDA): 131,088 tokens' worth.
    assert _flag(spec.argv, "--kv-cache-memory-bytes") == str(-(-9 * 2**30 * (8192 * 16 + 16) // (8192 * 16)))
    assert _flag(spec.argv, "--quantization") == "fp8"  # online FP8 of the full-precision repo
    guard = _by_name(hybrid_plan)["guard-chat"].argv
    assert "--quantization" not in guard  # the FP8 checkpoint carries its own config
    assert _flag(guard, "--gpu-memory-utilization") == "0.50"


def test_vllm_pipeline_split_sets_layer_partition(hybrid_plan):
    big = hybrid_plan.service("big").model_copy(update={"engine": "vllm", "mode": "pipeline_parallel", "model_path": None})
    plan = hybrid_plan.model_copy(update={"services": [big]})
    spec = render_plan(plan)[0]
    assert _flag(spec.argv, "--pipeline-parallel-size") == "2" and _flag(spec.argv, "--tensor-parallel-size") == "1"
    assert spec.env["VLLM_PP_LAYER_PARTITION"] == "48,32"
    tp = plan.model_copy(update={"services": [big.model_copy(update={"mode": "tensor_parallel"})]})
    spec = render_plan(tp)[0]
    assert _flag(spec.argv, "--tensor-parallel-size") == "2" and "VLLM_PP_LAYER_PARTITION" not in spec.env


def test_tei_whisper_and_image_flags(hybrid_plan):
    specs = _by_name(hybrid_plan)
    assert _flag(specs["embed"].argv, "--model-id") == "BAAI/bge-m3"
    assert _flag(specs["rerank"].argv, "--model-id") == "BAAI/bge-reranker-v2-m3"
    assert _flag(specs["whisper"].argv, "--inference-path") == "/v1/audio/transcriptions"
    assert _flag(specs["sdxl"].argv, "--listen-port") == str(specs["sdxl"].port)
    assert specs["sdxl"].health_path == "/v1/models"  # sd-server has no /health


def test_unknown_catalog_model_is_a_clear_error(hybrid_plan):
    odd = hybrid_plan.service("embed").model_copy(update={"model": "no-such-model"})
    with pytest.raises(GpumixError, match="no Hugging Face repo known for model 'no-such-model'"):
        render_plan(hybrid_plan.model_copy(update={"services": [odd]}))


def test_service_on_a_device_missing_from_the_plan_is_a_clear_error(hybrid_plan):
    odd = hybrid_plan.service("embed").model_copy(update={"devices": [7]})
    with pytest.raises(GpumixError, match="device 7"):
        render_plan(hybrid_plan.model_copy(update={"services": [odd]}))


def test_commands_script_quotes_every_argument_and_is_valid_bash(hybrid_plan, tmp_path):
    odd = hybrid_plan.service("cpu-embed").model_copy(update={"name": "it's odd", "model_path": "/m/a b$(x).gguf"})
    plan = hybrid_plan.model_copy(update={"services": [*hybrid_plan.services, odd]})
    specs = render_plan(plan)
    script = render_script(specs)
    path = tmp_path / "run.sh"
    path.write_text(script)
    subprocess.run(["bash", "-n", str(path)], check=True)
    lines = [line for line in script.splitlines() if line.startswith("env ")]
    assert len(lines) == len(specs)
    for line, spec in zip(lines, specs, strict=True):
        words = shlex.split(line.split(" >", 1)[0])
        env_words = [w for w in words[1:] if re.match(r"^[A-Z_]+=", w)]
        assert words[1 + len(env_words) :] == spec.argv  # the shell sees exactly the argv
        assert dict(w.split("=", 1) for w in env_words) == spec.env


@pytest.mark.llama
def test_every_llama_flag_gpumix_renders_is_known_to_llama_server(hybrid_plan):
    from gpumix.launch.llamacpp import require_llama_cpp

    help_text = subprocess.run([str(require_llama_cpp().binary("llama-server")), "--help"], capture_output=True,
                               text=True, timeout=60).stdout  # fmt: skip
    known = set(re.findall(r"(?<![\w-])(-{1,2}[a-z][\w-]*)", help_text))
    for spec in render_plan(hybrid_plan):
        if spec.engine == "llama.cpp":
            flags = {arg for arg in spec.argv[1:] if re.match(r"^-{1,2}[a-z]", arg)}
            assert flags <= known, flags - known


def test_llama_cpp_cpu_flags_follow_cpuinfo(tmp_path):
    """A fixed -DGGML_AVX512=ON built binaries that died with SIGILL on a CPU without avx512f."""
    from gpumix.launch.llamacpp import cpu_feature_flags

    without = tmp_path / "cpuinfo-avx2"
    without.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma f16c\n")
    flags = cpu_feature_flags(without)
    assert "-DGGML_AVX2=ON" in flags and "-DGGML_AVX512=OFF" in flags
    with_512 = tmp_path / "cpuinfo-avx512"
    with_512.write_text("flags\t\t: avx avx2 fma f16c avx512f avx512bw\n")
    assert "-DGGML_AVX512=ON" in cpu_feature_flags(with_512)
    assert "-DGGML_AVX2=OFF" in cpu_feature_flags(tmp_path / "missing")


def test_flux_gets_its_vae_and_text_encoders_with_the_encoders_on_the_cpu(tmp_path, monkeypatch):
    """sd.cpp runs FLUX from a diffusion model plus VAE, CLIP-L and T5-XXL (its docs/flux.md); the catalog's memory
    counts the text encoders in RAM, so the launch must put them there."""
    from gpumix.launch.models import ENV_MODELS_DIR, download_hint

    monkeypatch.setenv(ENV_MODELS_DIR, str(tmp_path))
    plan = plan_services(parse_plan_text("devices:\n  - gpu: RTX 4090\nservices:\n  - {name: img, model: flux.1-schnell}\n"))
    (spec,) = render_plan(plan)
    assert _flag(spec.argv, "--diffusion-model") == str(tmp_path / "flux1-schnell-q8_0.gguf")
    assert _flag(spec.argv, "--vae") == str(tmp_path / "ae.safetensors")
    assert _flag(spec.argv, "--clip_l") == str(tmp_path / "clip_l.safetensors")
    assert _flag(spec.argv, "--t5xxl") == str(tmp_path / "t5xxl_fp16.safetensors")
    assert _flag(spec.argv, "--backend") == "te=cpu"
    assert spec.files == [str(tmp_path / n) for n in ("flux1-schnell-q8_0.gguf", "ae.safetensors", "clip_l.safetensors",
                                                      "t5xxl_fp16.safetensors")]  # fmt: skip
    assert "FLUX.1-schnell-gguf" in download_hint("flux.1-schnell", tmp_path / "flux1-schnell-q8_0.gguf")
    assert "FLUX.1-schnell-gguf" not in download_hint("flux.1-schnell", tmp_path / "ae.safetensors")


def test_image_service_in_its_low_memory_setting_gets_the_sd_server_flags(tmp_path, monkeypatch):
    """The hybrid box as issue 9 writes it plans SDXL and its refiner in sd-server's low-memory setting; the launch
    renders exactly the catalog's flags (separate argv items, no shell), and none for a service at its defaults."""
    from gpumix.launch.models import ENV_MODELS_DIR
    from gpumix.models.catalog import load_model

    monkeypatch.setenv(ENV_MODELS_DIR, str(tmp_path))
    text = ("devices:\n  - gpu: RTX 4090\nservices:\n  - {name: img, model: sdxl, memory: low}\n"
            "  - {name: img2, model: sdxl}\n")  # fmt: skip
    plan = plan_services(parse_plan_text(text))
    assert [s.memory_setting for s in plan.services] == ["low", "default"]
    specs = _by_name(plan)
    flags = list(load_model("sdxl").service_memory.low_memory.args)  # type: ignore[union-attr]
    assert flags == ["--diffusion-fa", "--vae-tiling", "--vae-conv-direct"]
    argv = specs["img"].argv
    assert argv[argv.index("--diffusion-fa"):argv.index("--diffusion-fa") + 3] == flags
    assert not set(flags) & set(specs["img2"].argv)
    hand_made = plan.service("img2").model_copy(update={"model": "whisper-large-v3", "memory_setting": "low"})
    with pytest.raises(GpumixError, match="no flags"):
        render_plan(plan.model_copy(update={"services": [hand_made]}))


def test_hybrid_box_scenario_renders_every_service_with_the_images_low_memory_flags(tmp_path, monkeypatch):
    """Issue 9's hybrid box as written: all six services render (the refiner has its own weights file), both image
    services carry the low-memory flags the plan chose, and the commands script quotes them as separate words."""
    from pathlib import Path

    from gpumix.launch.models import ENV_MODELS_DIR
    from gpumix.plan.planner import plan_file

    monkeypatch.setenv(ENV_MODELS_DIR, str(tmp_path))
    plan = plan_file(Path(__file__).resolve().parents[2] / "examples" / "hybrid-box-scenario.yaml", advise=False)
    specs = _by_name(plan)
    assert set(specs) == {"chat", "images", "refiner", "transcribe", "embeddings", "guard"}
    assert _flag(specs["refiner"].argv, "-m") == str(tmp_path / "sd_xl_refiner_1.0.safetensors")
    for name in ("images", "refiner"):
        assert plan.service(name).memory_setting == "low"
        assert specs[name].argv[-3:] == ["--diffusion-fa", "--vae-tiling", "--vae-conv-direct"]
    script = render_script(render_plan(plan))
    (line,) = [ln for ln in script.splitlines() if "sd_xl_refiner_1.0.safetensors" in ln and "sd-server" in ln]
    words = shlex.split(line)
    assert words[words.index("--diffusion-fa"):words.index("--diffusion-fa") + 3] == ["--diffusion-fa", "--vae-tiling",
                                                                                       "--vae-conv-direct"]  # fmt: skip
