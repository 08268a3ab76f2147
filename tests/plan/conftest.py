from __future__ import annotations

import pytest
from plan_fixtures import FIXED_CALIBRATION

from gpumix.estimate.calibration import Calibration


@pytest.fixture
def calibration() -> Calibration:
    return FIXED_CALIBRATION
