"""The self-contained HTML report: eight views of one plan, the plan embedded as JSON, no external reference.

Offline by construction: the template and everything filled into it are local; a Content-Security-Policy meta
tag forbids every fetch (default-src 'none'), allows inline styles and data: images, and runs only the one inline
script whose SHA-256 it names.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from gpumix.errors import GpumixError
from gpumix.report import plan_fields as pf
from gpumix.report import svg
from gpumix.report.build import MEMORY_PROPORTIONAL_MARK, PLANNED_MARK, ReportData
from gpumix.report.svg import esc

VIEWS = (
    ("summary", "Summary"),
    ("memory", "Memory per card"),
    ("placement", "Services × cards"),
    ("layers", "Layer split"),
    ("performance", "Predicted performance"),
    ("split-curve", "Split vs speed"),
    ("compare", "Hardware options"),
    ("warnings", "Warnings and advice"),
)

SLO_LABELS = {"decode_tokens_per_s": "decode t/s", "aggregate_tokens_per_s": "aggregate t/s", "ttft_ms": "TTFT ms",
              "prefill_tokens_per_s": "prefill t/s"}  # fmt: skip

# What to do about each lint code (gpumix/plan/lint.py's table says when each fires; a test checks every code has one).
WARNING_ACTIONS = {
    "GPX001": "use a layer split (llama.cpp -sm layer) or pipeline parallel instead of tensor parallel over unlike cards",
    "GPX002": "keep the speed-aware VLLM_PP_LAYER_PARTITION gpumix sets; do not use even stages",
    "GPX003": "put the fastest card first (main GPU): reorder the devices or pass -mg",
    "GPX004": "run the model on one card: `mode: single`, or leave the mode to the planner",
    "GPX005": "move the small service to the other card, or pin it with `device:`",
    "GPX006": "fewer replicas (`replicas:`), or give the other service its own card",
    "GPX007": "pin each container with compose `device_ids` (gpumix export compose does)",
    "GPX008": "install one driver branch for every card of the host",
    "GPX009": "avoid the split over this link: a card with more memory, or a faster slot / NVLink",
    "GPX010": "free memory on the card, or shrink context / concurrency / quant of its services",
    "GPX011": "keep tensor parallel within one CPU socket, or use NVLink / pipeline parallel",
    "GPX012": "a faster card, a smaller quant, fewer concurrent streams, or a looser SLO",
    "GPX013": "more VRAM (a card added or swapped) takes layers off system RAM",
    "GPX014": "see the reasons: a smaller quant or context, another card, or CPU offload (`devices: - cpu:`)",
    "GPX015": "declare `load:` (busy share) per service, or spread the services over more cards",
    "GPX016": "add `prices: {CARD: {gbp_per_month: N}}` to the plan file",
    "GPX017": "free memory on the card (move a service off it), a shorter context, or a smaller kv_cache_dtype",
    "GPX018": "a bigger power supply (`psu_w`), fewer or lower-power cards on the host, or a power limit",
    "GPX019": "update the host's NVIDIA driver to one that supports the card's architecture",
    "GPX020": "split only over cards of one backend (CUDA or ROCm), or run a separate service per backend",
    "GPX021": "serve the model once (one service, replicas if needed) so the other service gets a card",
    "GPX022": "more VRAM (a card added or swapped) runs the image service at its default, faster setting; `memory: default` forces it",
    "GPX023": "keep ggml-rpc-server on a private cluster network (firewall its ports), or split on one host",
}


def _version() -> str:
    try:
        return metadata.version("gpumix")
    except metadata.PackageNotFoundError:
        return "dev"


def _script() -> str:
    return resources.files("gpumix.report").joinpath("data/report.js").read_text(encoding="utf-8")


def _csp(script: str) -> str:
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    return (f"default-src 'none'; style-src 'unsafe-inline'; img-src data:; script-src 'sha256-{digest}'; "
            "base-uri 'none'; form-action 'none'")  # fmt: skip


def _json_for_html(value: Any) -> str:
    """JSON that cannot end the <script> block it sits in."""
    return json.dumps(value, separators=(",", ":")).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _num(value: float | None, digits: int = 1, unit: str = "") -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}{unit}"


def _gbp(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"£{value:,.{digits}f}"


def _section(key: str, heading: str, body: str) -> str:
    number = [k for k, _ in VIEWS].index(key) + 1
    return (f'<section class="view" id="view-{key}" data-view="{key}"><h2>{number}. {esc(heading)}</h2>'
            f"{body}</section>")  # fmt: skip


def _note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


# ---- 1. summary -------------------------------------------------------------------------------------------------
def summary_view(doc: pf.Doc, notes: list[str] | None = None) -> str:
    s = pf.summary(doc)
    checks = [c for svc in pf.services(doc) for c in pf.slo_checks(svc)]
    met = sum(bool(c.get("met")) for c in checks)
    tiles = [
        ("feasible" if s["feasible"] else "NOT feasible", "plan", "ok" if s["feasible"] else "bad"),
        ("proven optimal" if s["optimal"] else "not proven optimal", esc(s["solver"] or "solver"), "ok" if s["optimal"] else "warn"),
        (_gbp(s["gbp_per_month"]), "per month", ""),
        (_gbp(s["gbp_per_million_tokens"], 3), "per million output tokens", ""),
        (f"{met}/{len(checks)}" if checks else "none", "SLOs met", "ok" if met == len(checks) else "bad"),
        (str(len(pf.devices(doc))), "cards", ""),
        (str(len(pf.services(doc))), "services", ""),
    ]  # fmt: skip
    html = '<div class="tiles">' + "".join(
        f'<div class="tile {cls}"><b>{esc(big)}</b><span>{small}</span></div>' for big, small, cls in tiles
    ) + "</div>"
    calibration = s["calibration"] or "the built-in fit (gpumix/estimate/data/calibration.json)"
    html += f"<p>Source: <code>{esc(s['source'] or '-')}</code>. Speeds predicted with {esc(calibration)}.</p>"
    if s["reasons"]:
        html += '<ul class="reasons">' + "".join(f"<li>{esc(r)}</li>" for r in s["reasons"]) + "</ul>"
    html += "".join(_note(n) for n in notes or [])
    return _section("summary", "Summary", html)


# ---- 2. memory per card -----------------------------------------------------------------------------------------
def memory_view(doc: pf.Doc) -> str:
    body = svg.memory_legend(doc) + svg.memory_bars(doc)
    body += _note("Each bar is one card's memory: per service its weights, KV cache, compute buffers and engine "
                  "overhead; the hatched part is the safety margin the planner leaves free; grey was not free when "
                  "planned. Hover for numbers.")  # fmt: skip
    return _section("memory", "Memory per card", body)


# ---- 3. services x cards ----------------------------------------------------------------------------------------
def placement_view(doc: pf.Doc) -> str:
    devs = pf.devices(doc)
    head = "".join(f'<th class="card-col" data-device="{esc(pf.device_id(d))}">{esc(pf.device_label(d))}</th>' for d in devs)
    rows = []
    for svc in pf.services(doc):
        place = pf.service_placement(svc)
        model = pf.service_model(svc)
        ids = pf.service_device_ids(doc, svc)
        mem = dict((dev, sum(parts.values())) for dev, parts in pf.service_memory(doc, svc))
        layers = pf.service_layers(svc)
        ts = pf.service_tensor_split(doc, svc)
        main = pf.service_main_device(doc, svc)
        cells = []
        for d in devs:
            dev_id = pf.device_id(d)
            if dev_id not in ids:
                cells.append("<td></td>")
                continue
            pos = ids.index(dev_id)
            bits = [svg.gb(mem.get(dev_id, 0))]
            if pos < len(layers):
                bits.append(f"{layers[pos]} layers")
            if dev_id in ts:
                bits.append(f"-ts {ts[dev_id]:g}")
            if dev_id == main and len(ids) > 1 and place["mode"] != "replica":
                bits.append("main")
            cells.append(f'<td class="on" data-device="{esc(dev_id)}">{"<br>".join(esc(b) for b in bits)}</td>')
        unplaced = "" if ids else ' class="unplaced"'
        rows.append(
            f'<tr data-service="{esc(svc["name"])}"{unplaced}><th>{esc(svc["name"])}</th>'
            f"<td class=nowrap>{esc(model['model'])} {esc(model['quant'])}</td><td>{esc(place['engine'])}</td>"
            f"<td>{esc(place['mode'] if ids else 'not placed')}</td><td>{place['replicas']}</td>"
            + "".join(cells)
            + f"<td>{'<br>'.join(esc(e) for e in place['endpoints'])}</td></tr>"
        )
    table = (f'<div class="scroll"><table class="placement"><thead><tr><th>service</th><th>model</th><th>engine</th>'
             f"<th>mode</th><th>replicas</th>{head}<th>endpoints</th></tr></thead><tbody>{''.join(rows)}</tbody></table></div>")  # fmt: skip
    return _section("placement", "Services × cards", table)


# ---- 4. layer strips --------------------------------------------------------------------------------------------
def layers_view(doc: pf.Doc) -> str:
    split = [s for s in pf.services(doc) if len(pf.service_layers(s)) >= 2]
    if not split:
        return _section("layers", "Layer split", _note("No service is split across devices in this plan."))
    body = ""
    for svc in split:
        place = pf.service_placement(svc)
        ngl = f", -ngl {place['n_gpu_layers']}" if place["n_gpu_layers"] is not None else ""
        body += (f'<h3>{esc(svc["name"])} <small>{esc(place["mode"])}, {sum(pf.service_layers(svc))} layers{esc(ngl)}'
                 f"</small></h3>{svg.layer_strip(doc, svc)}")  # fmt: skip
    return _section("layers", "Layer split", body)


# ---- 5. predicted performance -------------------------------------------------------------------------------------
def _with_range(svc: pf.Doc, metric: str, digits: int = 1, scale: float = 1.0) -> str:
    value = pf.predicted(svc).get(metric)
    text = _num(None if value is None else value * scale, digits)
    rng = pf.predicted_range(svc, metric)
    if rng is not None and value is not None:
        text += f' <span class="range">({rng[0] * scale:,.{digits}f}–{rng[1] * scale:,.{digits}f})</span>'
    return text


def _slo_range(check: pf.Doc) -> str:
    rng = pf.slo_range(check)
    return "" if rng is None else f' <span class="range">({rng[0]:,.1f}–{rng[1]:,.1f})</span>'


def performance_view(doc: pf.Doc) -> str:
    rows = []
    for svc in pf.services(doc):
        pred = pf.predicted(svc)
        work = pf.service_workload(svc)
        kind = pf.service_model(svc)["kind"]
        if kind == "llm":
            speed = [_with_range(svc, "decode_tokens_per_s"), _with_range(svc, "aggregate_tokens_per_s"),
                     _with_range(svc, "prefill_tokens_per_s", 0), _with_range(svc, "ttft_s", 0, 1000.0)]  # fmt: skip
            speed_cells = "".join(f"<td class=num>{s}</td>" for s in speed)
        else:
            thr = pred.get("throughput")
            text = f"{_num(thr, 2)} {esc(pred.get('throughput_unit') or '')}" if thr is not None else "–"
            speed_cells = f'<td class="throughput" colspan="4">{text}</td>'  # its own unit, across the LLM columns
        kv = "–"
        if work["kv_cache_tokens"] is not None:
            kv = f"{work['kv_cache_tokens']:,} tokens"
            if work["max_full_context_sequences"] is not None:
                kv += f"<br>{work['max_full_context_sequences']} × {work['context']:,}"
            kv = f'<span class="kv">{kv}</span>'
        shares, streams = pf.replica_shares(svc), pf.replica_concurrency(svc)
        share_text = " / ".join(f"{s * 100:.0f}%" for s in shares) if len(shares) > 1 else "–"
        if len(shares) > 1 and len(streams) == len(shares):
            share_text += "<br>" + " / ".join(str(n) for n in streams) + " streams"
        slos = "".join(
            f'<div class="slo" data-met="{str(bool(c.get("met"))).lower()}">'
            f"{'✓' if c.get('met') else '✗'} {esc(SLO_LABELS.get(str(c.get('metric')), c.get('metric')))} "
            f"{_num(c.get('predicted'), 1)}{_slo_range(c)} vs {esc(c.get('target'))}"
            + (f" ({c['margin'] * 100:+.0f}%)" if c.get("margin") is not None else "")
            + f"{svg.slo_bar(c)}</div>"
            for c in pf.slo_checks(svc)
        ) or "–"
        rows.append(
            f'<tr data-service="{esc(svc["name"])}"><th>{esc(svc["name"])}</th><td>{esc(work["context"])} × '
            f'{esc(work["concurrency"])}</td>' + speed_cells
            + f"<td>{kv}</td><td>{share_text}</td><td>{_gbp(pf.service_cost(svc), 3)}</td><td>{slos}</td></tr>"
        )
    table = ('<div class="scroll"><table class="performance"><thead><tr><th>service</th><th>context<br>× streams</th>'
             "<th>decode t/s<br>1 stream</th><th>aggregate t/s</th><th>prefill t/s</th><th>TTFT ms</th>"
             "<th>KV held</th><th>replica<br>shares</th><th>£/M<br>tokens</th><th>SLOs</th></tr></thead>"
             f"<tbody>{''.join(rows)}</tbody></table></div>")  # fmt: skip
    note = _note("Non-LLM services show their own throughput in their own unit. Ranges in brackets where "
                 "the estimator gives them.")  # fmt: skip
    return _section("performance", "Predicted performance", table + note)


# ---- 6. split vs speed -------------------------------------------------------------------------------------------
def curve_view(data: ReportData) -> str:
    curves = data["curves"]
    if not curves:
        why = data["left_out"] or "No service is layer-split across GPUs in this plan, so there is no split to choose."
        return _section("split-curve", "Split vs speed", _note(why))
    body = ""
    for c in curves:
        marks = c["marks"]
        planned = marks[PLANNED_MARK]
        default = marks.get(MEMORY_PROPORTIONAL_MARK)
        key = "aggregate" if c.get("objective") == "throughput" and c.get("concurrency", 1) > 1 else "decode"
        gain = planned[key] / default[key] if default and default[key] else None
        body += (f'<h3>{esc(c["service"])} <small>{esc(" + ".join(c["devices"]))}, {c["n_layers"]} layers, '
                 f"{esc(key)} tokens/s</small></h3>" + svg.split_curve(c))  # fmt: skip
        rows = "".join(
            f"<tr><th>{esc(label)}</th><td>{esc('/'.join(map(str, m['layers'])))}</td>"
            f"<td class=num>{m['decode']:.1f}</td><td class=num>{m['aggregate']:.1f}</td>"
            f"<td>{'yes' if m['fits'] else 'no'}</td></tr>"
            for label, m in marks.items()
        )
        body += (f'<table class="marks"><thead><tr><th>split</th><th>layers</th><th>decode t/s</th>'
                 f"<th>aggregate t/s</th><th>fits</th></tr></thead><tbody>{rows}</tbody></table>")  # fmt: skip
        if gain is not None:
            body += _note(f"The speed-aware split is {gain:.2f}× llama.cpp's memory-proportional default here.")
        if c["measured"]:
            body += _note(f"Crosses: {len(c['measured'])} point(s) measured by gpumix tune.")
    return _section("split-curve", "Split vs speed", body)


# ---- 7. compare -------------------------------------------------------------------------------------------------
def compare_view(data: ReportData) -> str:
    cmp = data["compare"]
    if not cmp:
        why = data["left_out"] or "compare was not run (--no-compare)"
        return _section("compare", "Hardware options", _note(why))
    rows = "".join(
        f'<tr data-option="{esc(r["option"])}" class="{"ok" if r["feasible"] else "bad"}"><th>{esc(r["option"])}</th>'
        f"<td>{'yes' if r['feasible'] else 'no'}</td><td class=num>{_gbp(r['gbp_per_month'])}</td>"
        f"<td class=num>{_gbp(r['gbp_per_million_tokens'], 3)}</td><td class=num>{r['aggregate_tokens_per_s']:,.1f}</td>"
        f"<td>{r['slos_met']}/{r['slos_total']}</td><td>{esc(r['verdict'])}</td></tr>"
        for r in cmp["rows"]
    )
    scatter = svg.compare_scatter(cmp["rows"])
    unpriced = [r["option"] for r in cmp["rows"] if not r.get("gbp_per_month")]
    body = scatter or _note("No option has a £/month (add `prices:` to the plan file), so there is nothing to plot.")
    if scatter and unpriced:
        body += _note(f"Not plotted, no £/month: {', '.join(unpriced)}.")
    body += (f'<table class="compare"><thead><tr><th>option</th><th>fits</th><th>£/month</th><th>£/M tokens</th>'
             f"<th>LLM aggregate t/s</th><th>SLOs</th><th>verdict</th></tr></thead><tbody>{rows}</tbody></table>")  # fmt: skip
    return _section("compare", "Hardware options", body)


# ---- 8. warnings and suggestions ------------------------------------------------------------------------------------
def warnings_view(doc: pf.Doc) -> str:
    warns = pf.warnings(doc)
    if warns:
        rows = "".join(
            f'<tr class="sev-{esc(w["severity"])}" data-code="{esc(w["code"])}"><td><code>{esc(w["code"])}</code></td>'
            f"<td>{esc(w['severity'])}</td><td>{esc(w['service'] or '')}</td><td>{esc(w['message'])}</td>"
            f"<td>{esc(WARNING_ACTIONS.get(w['code'][:6], ''))}</td></tr>"
            for w in warns
        )
        body = (f'<table class="warnings"><thead><tr><th>code</th><th>severity</th><th>service</th><th>warning</th>'
                f"<th>what to do</th></tr></thead><tbody>{rows}</tbody></table>")  # fmt: skip
    else:
        body = _note("No warnings.")
    sugg = pf.suggestions(doc)
    if sugg:
        items = "".join(
            f'<li class="suggestion" data-feasible="{str(bool(s.get("feasible"))).lower()}">'
            + (f"{esc(s['service'])}: " if s.get("service") else "")
            + f"<b>{esc(s.get('kind', ''))}</b> {esc(s.get('change', ''))}"
            + (f" — {'fits' if s.get('feasible') else 'still does not fit'}" if "feasible" in s else "")
            + (f", {s['decode_tokens_per_s']:.1f} t/s" if isinstance(s.get("decode_tokens_per_s"), int | float) else "")
            + (f", £{s['gbp_per_month']:,.0f}/month" if isinstance(s.get("gbp_per_month"), int | float) else "")
            + "</li>"
            for s in sugg
        )
        body += f"<h3>Suggestions (re-planned)</h3><ol class=\"suggestions\">{items}</ol>"
    return _section("warnings", "Warnings and advice", body)


# ---- the page ---------------------------------------------------------------------------------------------------
def render_html(data: ReportData) -> str:
    doc = data["plan"]
    script = _script()
    body = "".join((
        summary_view(doc, data["notes"]), memory_view(doc), placement_view(doc), layers_view(doc), performance_view(doc),
        curve_view(data), compare_view(data), warnings_view(doc),
    ))  # fmt: skip
    nav = "".join(f'<a href="#view-{k}">{esc(h)}</a>' for k, h in VIEWS)
    name = pf.summary(doc)["source"] or data["input"]
    template = resources.files("gpumix.report").joinpath("data/report.html").read_text(encoding="utf-8")
    fills = {
        "csp": esc(_csp(script)), "title": esc(f"gpumix plan report: {name}"), "heading": esc(name), "nav": nav,
        "body": body, "plan_json": _json_for_html(doc), "script": script, "version": esc(_version()),
    }  # fmt: skip
    # One pass, so text from the plan that happens to look like a placeholder stays text.
    return re.sub(r"\{\{(\w+)\}\}", lambda m: fills[m.group(1)], template)


def write_report(data: ReportData, output: Path) -> Path:
    """The report as one HTML file at `output`."""
    html = render_html(data)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(html, encoding="utf-8")
    except OSError as exc:
        raise GpumixError(f"cannot write {output}: {exc.strerror}", hint="pass a writable -o FILE") from None
    return output
