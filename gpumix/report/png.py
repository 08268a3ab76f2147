"""`gpumix report --png DIR`: the memory bars and the split curves as PNG files (matplotlib, Agg: no display)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gpumix.errors import GpumixError
from gpumix.report import plan_fields as pf
from gpumix.report.build import ReportData
from gpumix.report.svg import MARK_STYLE, OVER, PART_LABEL, PART_OPACITY, service_colours
from gpumix.units import GB

DPI = 100
_MARKERS = {"circle": "o", "square": "s", "diamond": "D"}


def write_pngs(data: ReportData, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GpumixError(f"cannot create {out_dir}: {exc.strerror}", hint="pass a writable --png DIR") from None
    written = [_memory_png(data["plan"], out_dir / "memory.png")]
    for curve in data["curves"]:
        written.append(_curve_png(curve, out_dir / f"split-{curve['service']}.png"))
    return written


def _memory_png(doc: pf.Doc, path: Path) -> Path:
    import matplotlib.pyplot as plt

    devs = pf.devices(doc)
    colours = service_colours(doc)
    fig, ax = plt.subplots(figsize=(8, 1.6 + 0.55 * len(devs)), dpi=DPI)
    booked: dict[str, list[tuple[str, dict[str, int]]]] = {}
    for svc in pf.services(doc):
        for dev_id, parts in pf.service_memory(doc, svc):
            booked.setdefault(dev_id, []).append((svc["name"], parts))
    seen: set[str] = set()
    for row, dev in enumerate(devs):
        dev_id = pf.device_id(dev)
        mem = pf.device_memory(dev)
        usable = mem["free"] - pf.device_margin_bytes(dev)
        x = 0.0
        for name, parts in booked.get(dev_id, []):
            for part, value in parts.items():
                if value <= 0:
                    continue
                label = name if name not in seen else None
                seen.add(name)
                ax.barh(row, value / GB, left=x, color=colours[name], alpha=PART_OPACITY[part], label=label,
                        edgecolor="white", linewidth=0.3)  # fmt: skip
                x += value / GB
        ax.barh(row, (mem["free"] - usable) / GB, left=usable / GB, color="none", hatch="////", edgecolor="#999",
                linewidth=0)  # fmt: skip
        if mem["total"] > mem["free"]:
            ax.barh(row, (mem["total"] - mem["free"]) / GB, left=mem["free"] / GB, color="#bbb")
        ax.barh(row, mem["total"] / GB, color="none", edgecolor=OVER if x * GB > usable else "#555", linewidth=1.2)
    ax.set_yticks(range(len(devs)), [f"{pf.device_id(d)} {d.get('name', '')}" for d in devs])
    ax.invert_yaxis()
    ax.set_xlabel("GB (10^9 bytes); hatched = safety margin, red outline = over-committed")
    opacities = ", ".join(f"{PART_LABEL[p]} {o:.0%}" for p, o in PART_OPACITY.items())
    ax.set_title(f"memory per card (opacity: {opacities})", fontsize=9)
    fig.tight_layout(rect=(0, 0.35 / (1.6 + 0.55 * len(devs)), 1, 1))  # room for the legend below
    fig.legend(fontsize=8, loc="lower center", ncol=min(6, max(len(seen), 1)), frameon=False)
    fig.savefig(path)
    plt.close(fig)
    return path


def _curve_png(curve: dict[str, Any], path: Path) -> Path:
    import matplotlib.pyplot as plt

    key = "aggregate" if curve.get("objective") == "throughput" and curve.get("concurrency", 1) > 1 else "decode"
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=DPI)
    n = curve["n_layers"]
    if curve["sweep"]:
        xs = [p["layers"][0] for p in curve["sweep"]]
        ys = [p[key] for p in curve["sweep"]]
        ax.plot(xs, ys, color="#bbb", linestyle="--", label="predicted (does not fit)")
        fit_ys = [y if p["fits"] else float("nan") for p, y in zip(curve["sweep"], ys, strict=True)]
        ax.plot(xs, fit_ys, color="#333", label="predicted (fits)")
        for label, m in curve["marks"].items():
            colour, shape = MARK_STYLE[label]
            ax.plot([m["layers"][0]], [m[key]], _MARKERS[shape], color=colour, label=label, markersize=8)
        first = curve["devices"][0]
        for p in curve["measured"]:
            x = (n if p["devices"][0].lower() == first.lower() else 0) if p["alone"] else p["layers"][0]
            ax.plot([x], [p["tokens_per_s"]], "x", color="black", markersize=9, mew=2)
        ax.set_xlabel(f"layers on {first} (of {n}; the rest on {curve['devices'][1]})")
        ax.set_xlim(0, n)
    else:
        labels = list(curve["marks"])
        ax.bar(range(len(labels)), [curve["marks"][k][key] for k in labels], color=[MARK_STYLE[k][0] for k in labels])
        ax.set_xticks(range(len(labels)), [k.split(" (")[0] for k in labels])
    ax.set_ylim(bottom=0)
    ax.set_ylabel(f"{key} tokens/s")
    ax.set_title(f"{curve['service']}: split vs speed ({' + '.join(curve['devices'])})", fontsize=10)
    ax.grid(alpha=0.3)
    if curve["sweep"]:
        ax.legend(fontsize=7, loc="lower center")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
