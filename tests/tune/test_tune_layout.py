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
