from __future__ import annotations

import pytest
from runhelpers import EXAMPLES

from gpumix.plan.result import Plan


@pytest.fixture(scope="session")
def cpu_demo_plan() -> Plan:
    """examples/cpu-demo.yaml planned by the real planner (chat on SmolLM2 135M, embeddings on Gemma 3 270M, CPU)."""
    from gpumix.plan.planner import plan_file

    plan = plan_file(EXAMPLES / "cpu-demo.yaml")
    assert plan.feasible, plan.reasons
    return plan

