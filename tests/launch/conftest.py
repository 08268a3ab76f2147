from __future__ import annotations

from pathlib import Path

import pytest

from gpumix.plan.result import Plan

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def hybrid_plan() -> Plan:
    """RTX 4090 + RTX 5060 Ti (+ host CPU): vLLM, TEI, whisper, sd, a llama.cpp layer split and replicas."""
    return Plan.model_validate_json((DATA / "hybrid-box.plan.json").read_text())
