"""Service → placement assignment as a 0/1 integer programme, solved with HiGHS (highspy).

Each service has candidate placements ("options": a mode on a device or device group, with the memory it needs
per device and a cost). Choose exactly one option per service — or leave it unplaced at a large penalty, so the
problem is always solvable and says *which* services do not fit — such that on every device the planned memory
stays within free − margin and the declared busy shares of co-located services stay ≤ 1. Minimise the total cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import highspy
import numpy as np

# highspy's Highs() constructor carries no annotations (its stubs type the methods only).
_HIGHS = highspy.Highs()  # type: ignore[no-untyped-call]
SOLVER_NAME = f"HiGHS {_HIGHS.version()}" if hasattr(_HIGHS, "version") else "HiGHS"
UNPLACED_PENALTY = 1e6  # far above any option's cost: placing a service always beats leaving it out
TIME_LIMIT_S = 20.0


@dataclass(frozen=True)
class Choice:
    service: int
    cost: float
    memory: dict[int, int]  # device key → bytes
    load: dict[int, float]  # device key → busy share (bandwidth/compute) when the service's load is declared


@dataclass(frozen=True)
class Assignment:
    chosen: list[int | None]  # per service: index into its choices, None = unplaced
    optimal: bool  # proven: HiGHS closed the gap to zero
    objective: float
    gap: float  # relative gap between the solution and HiGHS's bound


def solve_assignment(
    n_services: int,
    choices: Sequence[Choice],
    capacity_bytes: dict[int, int],
    load_capacity: float = 1.0,
    rel_gap: float = 0.0,
    time_limit_s: float = TIME_LIMIT_S,
    unplaced_penalty: Sequence[float] | None = None,
) -> Assignment:
    """Pick one choice per service (or none) minimising cost, with memory and load capacities per device.
    `unplaced_penalty`: per service, the cost of leaving it out (default UNPLACED_PENALTY each)."""
    n_opt = len(choices)
    n_col = n_opt + n_services  # + one "unplaced" slack per service
    rows_lower: list[float] = []
    rows_upper: list[float] = []
    cols: list[list[tuple[int, float]]] = [[] for _ in range(n_col)]
    for _ in range(n_services):  # exactly one option (or the slack) per service
        rows_lower.append(1.0)
        rows_upper.append(1.0)
    for j, choice in enumerate(choices):
        cols[j].append((choice.service, 1.0))
    for s in range(n_services):
        cols[n_opt + s].append((s, 1.0))
    devices = sorted(capacity_bytes)
    mem_row = {}
    for key in devices:
        mem_row[key] = len(rows_upper)
        rows_lower.append(-np.inf)
        rows_upper.append(float(capacity_bytes[key]) / 1e9)  # GB: keeps coefficients well scaled
    load_row = {}
    loaded = {key for c in choices for key in c.load}
    for key in devices:
        if key in loaded:
            load_row[key] = len(rows_upper)
            rows_lower.append(-np.inf)
            rows_upper.append(load_capacity)
    for j, choice in enumerate(choices):
        for key, used in choice.memory.items():
            if key in mem_row and used:
                cols[j].append((mem_row[key], used / 1e9))
        for key, share in choice.load.items():
            if key in load_row and share:
                cols[j].append((load_row[key], share))
    costs = [c.cost for c in choices] + list(unplaced_penalty or [UNPLACED_PENALTY] * n_services)

    lp = highspy.HighsLp()
    lp.num_col_ = n_col
    lp.num_row_ = len(rows_upper)
    lp.col_cost_ = np.asarray(costs, dtype=float)
    lp.col_lower_ = np.zeros(n_col)
    lp.col_upper_ = np.ones(n_col)
    lp.row_lower_ = np.asarray(rows_lower, dtype=float)
    lp.row_upper_ = np.asarray(rows_upper, dtype=float)
    starts, index, value = [0], [], []
    for col in cols:
        for row, coef in col:
            index.append(row)
            value.append(coef)
        starts.append(len(index))
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = np.asarray(starts, dtype=np.int32)
    lp.a_matrix_.index_ = np.asarray(index, dtype=np.int32)
    lp.a_matrix_.value_ = np.asarray(value, dtype=float)
    lp.integrality_ = [highspy.HighsVarType.kInteger] * n_col

    h = highspy.Highs()  # type: ignore[no-untyped-call]  # untyped constructor, as above
    h.setOptionValue("output_flag", False)
    h.setOptionValue("time_limit", time_limit_s)
    h.setOptionValue("mip_rel_gap", rel_gap)
    h.setOptionValue("threads", 1)
    h.passModel(lp)
    start = _greedy_start(n_services, choices, capacity_bytes)
    solution = highspy.HighsSolution()
    solution.col_value = start
    solution.value_valid = True
    h.setSolution(solution)  # an incumbent from the first second on: large problems stop early with a plan
    h.run()
    status = h.getModelStatus()
    values = np.asarray(h.getSolution().col_value) if h.getInfo().primal_solution_status else np.zeros(n_col)
    chosen: list[int | None] = [None] * n_services
    by_service: dict[int, list[int]] = {}
    for j, choice in enumerate(choices):
        by_service.setdefault(choice.service, []).append(j)
    for s in range(n_services):
        for local, j in enumerate(by_service.get(s, [])):
            if values[j] > 0.5:
                chosen[s] = local
    info = h.getInfo()
    gap = float(info.mip_gap) if info.mip_gap == info.mip_gap else 1.0
    return Assignment(
        chosen=chosen,
        optimal=status == highspy.HighsModelStatus.kOptimal and gap <= 1e-9,
        objective=float(info.objective_function_value),
        gap=gap,
    )


def _greedy_start(n_services: int, choices: Sequence[Choice], capacity_bytes: dict[int, int]) -> list[float]:
    """Biggest services first, each on its cheapest option that still fits (loads ignored: HiGHS repairs)."""
    used = dict.fromkeys(capacity_bytes, 0)
    by_service: dict[int, list[int]] = {}
    for j, c in enumerate(choices):
        by_service.setdefault(c.service, []).append(j)
    size = {s: max(sum(choices[j].memory.values()) for j in js) for s, js in by_service.items()}
    x = [0.0] * (len(choices) + n_services)
    for s in range(n_services):
        x[len(choices) + s] = 1.0
    for s in sorted(by_service, key=lambda s: -size[s]):
        for j in sorted(by_service[s], key=lambda j: choices[j].cost):
            if all(used.get(k, 0) + m <= capacity_bytes.get(k, 0) for k, m in choices[j].memory.items()):
                for k, m in choices[j].memory.items():
                    used[k] += m
                x[j], x[len(choices) + s] = 1.0, 0.0
                break
    return x
