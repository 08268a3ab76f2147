"""The fit's prior on architecture-family factors: bandwidth factors pulled toward their vendor's mean, compute
factors toward 1 (gpumix.calibrate.fit.VENDOR_FAMILIES)."""

from __future__ import annotations

import numpy as np

from gpumix.calibrate.fit import (
    _NAMES,
    FAMILY_PRIOR_WEIGHT,
    PARAMS,
    VENDOR_FAMILIES,
    jacobian_sparsity,
    prior_residuals,
    prior_terms,
)


def _vector(**factors: float) -> np.ndarray:
    x = np.asarray([p.x0 for p in PARAMS], dtype=float)
    for name, value in factors.items():
        x[_NAMES.index(name.replace("__", "."))] = value
    return x


def test_every_family_is_in_exactly_one_vendor() -> None:
    families = [f for vendor in VENDOR_FAMILIES for f in vendor]
    assert len(families) == len(set(families))
    assert {n.split(".", 1)[1] for n in _NAMES if n.startswith("arch_bw.")} == set(families)


def test_a_vendor_wide_bandwidth_shift_costs_only_its_anchor() -> None:
    nvidia = VENDOR_FAMILIES[0]
    shifted = _vector(**{f"arch_bw__{f}": 1.2 for f in nvidia})
    cost = np.asarray(prior_residuals(shifted))
    # one non-zero term: the NVIDIA bandwidth anchor (the mean log factor), at the prior's weight
    assert np.count_nonzero(np.abs(cost) > 1e-12) == 1
    assert np.isclose(np.abs(cost).max(), FAMILY_PRIOR_WEIGHT * np.log(1.2))


def test_a_family_away_from_its_vendor_is_pulled_back_but_compute_is_pulled_to_one() -> None:
    base = np.sum(np.square(prior_residuals(_vector(**{f"arch_bw__{f}": 1.2 for f in VENDOR_FAMILIES[0]}))))
    hopper_alone = {f"arch_bw__{f}": 1.2 for f in VENDOR_FAMILIES[0]} | {"arch_bw__Hopper": 1.5}
    assert np.sum(np.square(prior_residuals(_vector(**hopper_alone)))) > base
    compute = np.asarray(prior_residuals(_vector(arch__Hopper=1.2)))
    assert np.isclose(np.abs(compute).max(), FAMILY_PRIOR_WEIGHT * np.log(1.2))
    assert np.count_nonzero(np.abs(compute) > 1e-12) == 1


def test_the_jacobian_pattern_covers_each_prior_term_group() -> None:
    pattern = jacobian_sparsity([]).toarray()
    for row, (_own, group) in enumerate(prior_terms()):
        assert set(np.flatnonzero(pattern[row])) == set(group)
