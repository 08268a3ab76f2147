"""`gpumix tune --plot FILE.png`: predicted split curve vs measured points (matplotlib, Agg: no display)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from gpumix.errors import GpumixError
from gpumix.tune.splits import fraction_on
from gpumix.tune.tuner import TunePoint, TuneResult


def plot_tune(result: TuneResult, path: str | Path, extra: Sequence[TunePoint] = (), title: str | None = None) -> Path:
    """x: share of the model (repeating layers + output layer) on the first device; one predicted line per
    device holding the output layer; measured points as markers (`extra`: e.g. a benchmark's grid)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = result.layout.n_layers
    names = [d.name for d in result.devices]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    by_output: dict[str, list[tuple[float, float]]] = {}
    for p in result.curve:
        out = "host" if p.assignment.output_device is None else names[p.assignment.output_device]
        by_output.setdefault(out, []).append((fraction_on(p.assignment, 0, n), p.tokens_per_s))
    for out, pts in sorted(by_output.items()):
        pts.sort()
        ax.plot([x for x, _ in pts], [y for _, y in pts], "-", lw=1.2, label=f"predicted (output on {out})")
    if extra:
        ax.plot([fraction_on(p.assignment, 0, n) for p in extra], [p.tokens_per_s for p in extra], "s", ms=5,
                mfc="none", color="gray", label="measured (grid)")  # fmt: skip
    xs = [fraction_on(p.assignment, 0, n) for p in result.points]
    ax.plot(xs, [p.tokens_per_s for p in result.points], "o", color="black", label="measured by tune")
    best = result.best
    ax.plot([fraction_on(best.assignment, 0, n)], [best.tokens_per_s], "*", ms=14, color="red", label="best")
    ax.set_xlabel(f"share of layers + output on {names[0]}")
    ax.set_ylabel("tokens/s" + (" (all streams)" if result.objective == "throughput" else " (one stream)"))
    ax.set_title(title or f"{result.layout.name}: split over {' + '.join(names)}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    try:
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise GpumixError(f"cannot write plot {path}: {exc}") from exc
    finally:
        plt.close(fig)
    return path
