from __future__ import annotations

import pytest
from runhelpers import EXAMPLES

from gpumix.plan.result import Plan


@pytest.fixture(scope="session")
def cpu_demo_plan() -> Plan:
    """The plan.json equivalent of examples/cpu-demo.yaml (chat + embeddings, Gemma 3 270M on the CPU)."""
    return Plan.model_validate_json((EXAMPLES / "cpu-demo.plan.json").read_text())

