"""Hand-built SVG for the report: a few primitives and the charts (memory bars, layer strips, split curve,
compare scatter). Every mark carries a `<title>` tooltip. No scripts, no external references."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

from gpumix.report import plan_fields as pf
from gpumix.report.build import EVEN_MARK, MEMORY_PROPORTIONAL_MARK, PLANNED_MARK
from gpumix.units import GB

# Colour-blind-safe qualitative palette (Okabe & Ito, "Color Universal Design", 2008), then a few more hues.
SERVICE_COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000",
                   "#7F3C8D", "#11A579", "#3969AC", "#F2B701", "#E73F74", "#80BA5A", "#E68310", "#008695")  # fmt: skip
# Memory parts of one service: same hue, falling opacity.
PART_OPACITY = {"weights": 1.0, "kv_cache": 0.65, "compute": 0.4, "overhead": 0.22}
PART_LABEL = {"weights": "weights", "kv_cache": "KV cache", "compute": "compute buffers", "overhead": "overhead"}
OVER = "#d62728"
FONT = 'font-family="system-ui,sans-serif" font-size="12"'


def esc(value: Any) -> str:
    return escape(str(value), quote=True)


def gb(value_bytes: float) -> str:
    return f"{value_bytes / GB:.1f} GB"


def _attrs(attrs: dict[str, Any]) -> str:
    """Keyword arguments as SVG attributes: `class_` → class, `fill_opacity` → fill-opacity."""
    return "".join(f' {k.rstrip("_").replace("_", "-")}="{esc(v)}"' for k, v in attrs.items())


def title(text: str) -> str:
    return f"<title>{esc(text)}</title>"


def rect(x: float, y: float, w: float, h: float, fill: str, tip: str = "", **attrs: Any) -> str:
    extra = _attrs(attrs)
    return (f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(w, 0):.1f}" height="{h:.1f}" fill="{fill}"{extra}>'
            f"{title(tip) if tip else ''}</rect>")  # fmt: skip


def text(x: float, y: float, body: str, anchor: str = "start", **attrs: Any) -> str:
    extra = _attrs(attrs)
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{extra}>{esc(body)}</text>'


def svg(width: int, height: float, body: str, label: str, **attrs: Any) -> str:
    extra = _attrs(attrs)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height:.0f}" width="{width}" '
            f'height="{height:.0f}" role="img" aria-label="{esc(label)}" {FONT}{extra}>{body}</svg>')  # fmt: skip


def _clip(label: str, chars: int) -> str:
    return label if len(label) <= chars else label[: chars - 1] + "…"


def service_colours(doc: pf.Doc) -> dict[str, str]:
    return {s["name"]: SERVICE_COLOURS[i % len(SERVICE_COLOURS)] for i, s in enumerate(pf.services(doc))}


# ---- per card: stacked memory bar -----------------------------------------------------------------------------
def memory_bars(doc: pf.Doc) -> str:
    """One bar per card: each service's weights / KV / compute / overhead, then unplanned free memory, the
    planner's safety margin (hatched) and memory that was not free (grey). Over-commit is red."""
    colours = service_colours(doc)
    label_w, bar_x, bar_w, row_h = 190, 200, 520, 46
    rows = []
    per_device: dict[str, list[tuple[str, dict[str, int]]]] = {}
    for svc in pf.services(doc):
        for dev_id, parts in pf.service_memory(doc, svc):
            per_device.setdefault(dev_id, []).append((svc["name"], parts))
    for row, dev in enumerate(pf.devices(doc)):
        dev_id = pf.device_id(dev)
        mem = pf.device_memory(dev)
        margin = pf.device_margin_bytes(dev)
        not_free = max(mem["total"] - mem["free"], 0)
        booked = per_device.get(dev_id, [])
        planned = sum(sum(p.values()) for _, p in booked) or mem["planned"]
        usable = mem["free"] - margin
        scale_max = max(mem["total"], planned + not_free + margin, 1)
        k = bar_w / scale_max
        y = 8 + row * row_h
        over = planned > usable
        margin_x = bar_x + usable * k
        parts_svg = [rect(margin_x, y, margin * k, 22, "url(#hatch)",
                          f"{dev_id}: safety margin the planner keeps free, {gb(margin)}", class_="margin")]
        if not_free:
            parts_svg.append(rect(bar_x + mem["free"] * k, y, not_free * k, 22, "#bbb",
                                  f"{dev_id}: {gb(not_free)} not free when planned (other processes, display)",
                                  class_="notfree"))  # fmt: skip
        x: float = bar_x
        for name, parts in booked:
            for part, value in parts.items():
                if value <= 0:
                    continue
                tip = f"{name} on {dev_id}: {PART_LABEL[part]} {gb(value)}"
                parts_svg.append(rect(x, y, value * k, 22, colours.get(name, "#888"), tip,
                                      fill_opacity=PART_OPACITY[part], class_="seg", data_service=name,
                                      data_part=part))  # fmt: skip
                x += value * k
        free_left = max(usable - planned, 0)
        if free_left:
            parts_svg.append(rect(x, y, free_left * k, 22, "#f4f4f4",
                                  f"{dev_id}: {gb(free_left)} free for more services", stroke="#ccc", class_="free"))
        if over:
            parts_svg.append(rect(margin_x, y - 2, max(planned - usable, 0) * k, 26, "none",
                                  f"{dev_id}: over-committed by {gb(planned - usable)} (free − margin is {gb(usable)})",
                                  stroke=OVER, stroke_width=2.5, class_="overcommit"))  # fmt: skip
        outline = OVER if over else "#555"
        summary = (f"{gb(planned)} planned of {gb(mem['free'])} free ({gb(mem['total'])} total)"
                   + (f" — OVER by {gb(planned - usable)}" if over else ""))  # fmt: skip
        rows.append(
            f'<g class="card" data-device="{esc(dev_id)}" data-overcommit="{str(over).lower()}">'
            + title(f"{pf.device_label(dev)}: {summary}")
            + text(label_w, y + 15, _clip(f"{dev_id} {dev.get('name', '')}", 24), "end", font_weight="600")
            + "".join(parts_svg)
            + rect(bar_x, y, mem["total"] * k, 22, "none", "", stroke=outline, stroke_width=1)
            + text(bar_x, y + 36, summary, fill=OVER if over else "#333", font_size=11)
            + "</g>"
        )
    defs = ('<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
            'patternTransform="rotate(45)"><rect width="6" height="6" fill="#fff"/>'
            '<line x1="0" y1="0" x2="0" y2="6" stroke="#999" stroke-width="2"/></pattern></defs>')  # fmt: skip
    height = 8 + len(pf.devices(doc)) * row_h
    return svg(740, height, defs + "".join(rows), "memory per card", class_="memory-bars")


def memory_legend(doc: pf.Doc) -> str:
    colours = service_colours(doc)
    items = [f'<span class="key" data-service="{esc(n)}"><i style="background:{c}"></i>{esc(n)}</span>'
             for n, c in colours.items()]  # fmt: skip
    parts = [f'<span class="key"><i style="background:#555;opacity:{o}"></i>{PART_LABEL[p]}</span>'
             for p, o in PART_OPACITY.items()]  # fmt: skip
    parts.append('<span class="key"><i class="hatch"></i>safety margin</span>')
    parts.append('<span class="key"><i style="background:#bbb"></i>not free</span>')
    parts.append(f'<span class="key"><i style="border:2px solid {OVER}"></i>over-committed</span>')
    return f'<div class="legend">{"".join(items)}</div><div class="legend">{"".join(parts)}</div>'


# ---- per split service: layer strip ---------------------------------------------------------------------------
DEVICE_SHADES = ("#3b6ea8", "#e07b39", "#5a9e4b", "#9b59b6", "#c0392b", "#16a085", "#7f8c8d", "#d4ac0d")


def layer_strip(doc: pf.Doc, svc: pf.Doc) -> str:
    """One cell per layer, coloured by the device that holds it (engine order), and the output layer marked on
    the last device."""
    layers = pf.service_layers(svc)
    ids = pf.service_device_ids(doc, svc)
    names = {pf.device_id(d): d.get("name", "") for d in pf.devices(doc)}
    n = sum(layers)
    width, x0, cell_h = 740, 10, 24
    cell = (width - 2 * x0 - 40) / max(n, 1)
    cells, legend = [], []
    start, legend_x = 0, float(x0)
    for pos, (count, dev) in enumerate(zip(layers, ids, strict=False)):
        colour = DEVICE_SHADES[pos % len(DEVICE_SHADES)]
        tip = f"layers {start}–{start + count - 1} ({count}) on {dev} {names.get(dev, '')}" if count else f"no layers on {dev}"
        block = "".join(rect(x0 + (start + i) * cell, 6, max(cell - 0.6, 0.4), cell_h, colour, "")
                        for i in range(count))  # fmt: skip
        cells.append(f'<g class="layers" data-device="{esc(dev)}" data-count="{count}">{title(tip)}{block}</g>')
        label = _clip(f"{dev} {names.get(dev, '')}", 28) + f": {count} layers"
        legend.append(rect(legend_x, 40, 12, 12, colour, tip) + text(legend_x + 16, 50, label))
        legend_x += 16 + 6.6 * len(label) + 18  # ~6.6 px per character at 12 px
        start += count
    last = ids[len(layers) - 1] if len(ids) >= len(layers) and layers else (ids[-1] if ids else "?")
    out_x = x0 + n * cell + 4
    cells.append(f'<g class="output-layer" data-device="{esc(last)}">'
                 + rect(out_x, 6, 30, cell_h, DEVICE_SHADES[(len(layers) - 1) % len(DEVICE_SHADES)],
                        f"output layer (lm_head) on {last}", stroke="#000", stroke_width=2)
                 + text(out_x + 15, 22, "out", "middle", fill="#fff", font_weight="700") + "</g>")  # fmt: skip
    return svg(width, 60, "".join(cells) + "".join(legend), f"layer split of {svc['name']}", class_="layer-strip",
               data_service=svc["name"])  # fmt: skip


# ---- split-vs-speed curve -------------------------------------------------------------------------------------
MARK_STYLE = {PLANNED_MARK: ("#009E73", "circle"), MEMORY_PROPORTIONAL_MARK: ("#D55E00", "square"),
              EVEN_MARK: ("#0072B2", "diamond")}  # fmt: skip


def _marker(shape: str, x: float, y: float, colour: str, tip: str, cls: str) -> str:
    if shape == "square":
        return rect(x - 5, y - 5, 10, 10, colour, tip, class_=cls)
    if shape == "diamond":
        pts = f"{x:.1f},{y - 7:.1f} {x + 7:.1f},{y:.1f} {x:.1f},{y + 7:.1f} {x - 7:.1f},{y:.1f}"
        return f'<polygon points="{pts}" fill="{colour}" class="{cls}">{title(tip)}</polygon>'
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="6" fill="{colour}" class="{cls}">{title(tip)}</circle>'


def _axes(x0: float, y0: float, w: float, h: float, y_max: float, x_label: str, y_label: str,
          x_ticks: Sequence[tuple[float, str]]) -> str:  # fmt: skip
    parts = [f'<line x1="{x0}" y1="{y0 + h}" x2="{x0 + w}" y2="{y0 + h}" stroke="#333"/>',
             f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y0 + h}" stroke="#333"/>']  # fmt: skip
    for i in range(5):
        v = y_max * i / 4
        y = y0 + h - h * i / 4
        parts.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + w}" y2="{y:.1f}" stroke="#eee"/>')
        parts.append(text(x0 - 6, y + 4, f"{v:.3g}", "end", font_size=10))
    for frac, label in x_ticks:
        parts.append(text(x0 + w * frac, y0 + h + 14, label, "middle", font_size=10))
    parts.append(text(x0 + w / 2, y0 + h + 30, x_label, "middle"))
    parts.append(text(14, y0 + h / 2, y_label, "middle", transform=f"rotate(-90 14 {y0 + h / 2:.0f})"))
    return "".join(parts)


def split_curve(curve: dict[str, Any]) -> str:
    """Predicted tokens/s against the first device's share of the layers; the planned, memory-proportional and
    even splits marked; splits that do not fit drawn grey; tune's measured points as black crosses."""
    x0, y0, w, h = 60, 16, 620, 220
    n = curve["n_layers"]
    marks = curve["marks"]
    sweep = curve["sweep"]
    use_agg = curve.get("concurrency", 1) > 1 and curve.get("objective") == "throughput"
    key = "aggregate" if use_agg else "decode"
    values = [p[key] for p in sweep] + [m[key] for m in marks.values()] + [m["tokens_per_s"] for m in curve["measured"]]
    y_max = max(values or [1.0]) * 1.15 or 1.0
    first = curve["devices"][0] if curve["devices"] else "device 0"
    body = []
    if sweep:
        ticks = [(i / 4, f"{round(n * i / 4)}") for i in range(5)]
        body.append(_axes(x0, y0, w, h, y_max, f"layers on {first} (of {n}; the rest on {curve['devices'][1]})",
                          f"{key} tokens/s", ticks))  # fmt: skip

        def xy(layers_first: float, value: float) -> tuple[float, float]:
            return x0 + w * layers_first / n, y0 + h - h * value / y_max

        for fits in (False, True):  # the fitting part on top
            segs = []
            for a, b in zip(sweep, sweep[1:], strict=False):
                if a["fits"] == fits and b["fits"] == fits:
                    (xa, ya), (xb, yb) = xy(a["layers"][0], a[key]), xy(b["layers"][0], b[key])
                    segs.append(f"M{xa:.1f},{ya:.1f}L{xb:.1f},{yb:.1f}")
            if segs:
                colour, dash = ("#333", "") if fits else ("#bbb", ' stroke-dasharray="4 3"')
                tip = "predicted, fits" if fits else "predicted, does not fit (free − margin)"
                body.append(f'<path d="{"".join(segs)}" stroke="{colour}" fill="none" stroke-width="2"{dash} '
                            f'class="curve" data-fits="{str(fits).lower()}">{title(tip)}</path>')  # fmt: skip
        for label, m in marks.items():
            colour, shape = MARK_STYLE[label]
            x, y = xy(m["layers"][0], m[key])
            tip = f"{label}: {'/'.join(map(str, m['layers']))} layers → {m[key]:.1f} t/s" + ("" if m["fits"] else " (does not fit)")
            body.append(_marker(shape, x, y, colour, tip, "mark"))
        for p in curve["measured"]:
            lf = (n if p["devices"][0].lower() in (first.lower(),) else 0) if p["alone"] else p["layers"][0]
            x, y = xy(lf, p["tokens_per_s"])
            tip = f"measured by gpumix tune: {p['tokens_per_s']:.2f} t/s ({p['source']})"
            body.append(f'<path d="M{x - 6:.1f},{y - 6:.1f}L{x + 6:.1f},{y + 6:.1f}M{x - 6:.1f},{y + 6:.1f}'
                        f'L{x + 6:.1f},{y - 6:.1f}" stroke="#000" stroke-width="2.5" class="measured">{title(tip)}</path>')  # fmt: skip
    else:  # three or more devices: the three splits as bars
        labels = list(marks)
        body.append(_axes(x0, y0, w, h, y_max, "split", f"{key} tokens/s", [((i + 0.5) / len(labels), "") for i in range(len(labels))]))
        bw = w / len(labels)
        for i, label in enumerate(labels):
            m = marks[label]
            colour, _ = MARK_STYLE[label]
            bh = h * m[key] / y_max
            tip = f"{label}: {'/'.join(map(str, m['layers']))} layers → {m[key]:.1f} t/s"
            body.append(rect(x0 + i * bw + bw * 0.2, y0 + h - bh, bw * 0.6, bh, colour, tip, class_="mark"))
            body.append(text(x0 + (i + 0.5) * bw, y0 + h + 14, label.split(" (")[0], "middle", font_size=10))
    legend_y = y0 + h + 46
    legend = []
    for i, (label, (colour, shape)) in enumerate(MARK_STYLE.items()):
        legend.append(_marker(shape, x0 + 8 + i * 250, legend_y, colour, label, "legend-mark"))
        legend.append(text(x0 + 20 + i * 250, legend_y + 4, label.replace(" (llama.cpp default)", " (llama.cpp)"),
                           font_size=11))
    return svg(720, legend_y + 14, "".join(body) + "".join(legend), f"split vs speed for {curve['service']}",
               class_="split-curve", data_service=curve["service"])  # fmt: skip


# ---- compare: £/month vs aggregate tokens/s -------------------------------------------------------------------
def compare_scatter(rows: list[dict[str, Any]]) -> str:
    priced = [r for r in rows if r.get("gbp_per_month")]
    x0, y0, w, h = 70, 16, 600, 220
    if not priced:
        return ""
    x_max = max(r["gbp_per_month"] for r in priced) * 1.15
    y_max = max((r["aggregate_tokens_per_s"] for r in priced), default=1.0) * 1.15 or 1.0
    ticks = [(i / 4, f"£{x_max * i / 4:,.0f}") for i in range(5)]
    body = [_axes(x0, y0, w, h, y_max, "£ per month", "LLM aggregate tokens/s", ticks)]
    for r in priced:
        x = x0 + w * r["gbp_per_month"] / x_max
        y = y0 + h - h * r["aggregate_tokens_per_s"] / y_max
        tip = (f"{r['option']}: £{r['gbp_per_month']:,.0f}/month, {r['aggregate_tokens_per_s']:.1f} t/s, "
               f"SLOs {r['slos_met']}/{r['slos_total']} — {r['verdict']}")  # fmt: skip
        good = r["feasible"] and r["slos_met"] == r["slos_total"]
        if r["option"] == "this plan":
            body.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="9" fill="none" stroke="#000" stroke-width="2" '
                        f'class="option this-plan">{title(tip)}</circle>')  # fmt: skip
        elif not r["feasible"]:
            body.append(f'<path d="M{x - 6:.1f},{y - 6:.1f}L{x + 6:.1f},{y + 6:.1f}M{x - 6:.1f},{y + 6:.1f}'
                        f'L{x + 6:.1f},{y - 6:.1f}" stroke="{OVER}" stroke-width="2.5" class="option">{title(tip)}</path>')  # fmt: skip
        else:
            body.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="6" fill="{"#009E73" if good else "#E69F00"}" '
                        f'class="option">{title(tip)}</circle>')  # fmt: skip
        if r["option"] != "this plan":
            body.append(text(x + 8, y - 8, r["option"], font_size=10))
    return svg(700, y0 + h + 40, "".join(body), "compare: £ per month vs tokens/s", class_="compare-scatter")


def slo_bar(check: dict[str, Any]) -> str:
    """A small bar: predicted against target (the target line in the middle); green when met, red when missed."""
    margin = check.get("margin")
    met = bool(check.get("met"))
    w = 120
    share = 0.5 if margin is None else max(0.0, min(1.0, 0.5 * (1 + margin)))
    tip = f"{check.get('metric')}: predicted {check.get('predicted')}, target {check.get('target')}" + (
        f", margin {margin * 100:+.0f}%" if margin is not None else "")  # fmt: skip
    body = (rect(0, 3, w, 10, "#eee", "") + rect(0, 3, w * share, 10, "#009E73" if met else OVER, tip)
            + f'<line x1="{w / 2}" y1="0" x2="{w / 2}" y2="16" stroke="#000"/>')  # fmt: skip
    return svg(w, 16, body, tip, class_="slo-bar", data_met=str(met).lower())
