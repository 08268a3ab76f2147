"""The report without a browser: offline by construction (CSP, no URL), the plan embedded, bad input as a
one-line error, the plan read through plan_fields (with the planner's later fields when present), the split curve
from one planning run, tune's measured points."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gpumix.calibrate.files import load_calibration
from gpumix.errors import GpumixError
from gpumix.plan.planner import planning_of_file
from gpumix.report import plan_fields as pf
from gpumix.report.build import ReportOptions, build_report, report_of_planning
from gpumix.report.html import VIEWS, render_html

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="module")
def hybrid() -> dict:
    return build_report(EXAMPLES / "hybrid-box.yaml", ReportOptions(compare=False))


@pytest.fixture(scope="module")
def pair() -> dict:
    return build_report(EXAMPLES / "4090-3090-70b.yaml", ReportOptions(compare=False))


def _gpumix(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = os.environ | {"COLUMNS": "400"}  # rich wraps at the terminal width; the message is one line
    return subprocess.run([sys.executable, "-m", "gpumix", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env=env)  # fmt: skip


def test_html_is_offline_by_construction(hybrid: dict) -> None:
    html = render_html(hybrid)
    csp = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)"', html)
    assert csp is not None
    policy = csp.group(1).replace("&#x27;", "'")
    assert "default-src 'none'" in policy and "img-src data:" in policy and "connect-src" not in policy
    # the one inline script runs because the policy names its hash, and nothing else may run
    scripts = re.findall(r"<script>(.*?)</script>", html, re.S)
    assert len(scripts) == 1
    digest = base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in policy
    # no URL but the SVG namespace, no src attribute, no external stylesheet or font
    assert set(re.findall(r"https?://[^\s\"'<>)]+", html)) == {"http://www.w3.org/2000/svg"}
    assert not re.search(r"\ssrc=", html) and "@import" not in html and "url(http" not in html
    assert len(html) < 150_000


def test_plan_is_embedded_as_json(hybrid: dict) -> None:
    html = render_html(hybrid)
    embedded = re.search(r'<script type="application/json" id="gpumix-plan">(.*?)</script>', html, re.S)
    assert embedded is not None and json.loads(embedded.group(1)) == hybrid["plan"]


def test_text_from_the_plan_cannot_break_out(hybrid: dict) -> None:
    data = copy.deepcopy(hybrid)
    evil = '</script><script>alert(1)</script><img src=x onerror=alert(2)> {{csp}}'
    data["plan"]["warnings"].append({"code": "GPX999-x", "message": evil, "service": None, "severity": "warning"})
    html = render_html(data)
    assert html.count("</script>") == 2  # the JSON block and the one script
    assert "<img" not in html and "&lt;/script&gt;" in html
    assert "{{csp}}" in html and html.count("Content-Security-Policy") == 1  # a placeholder in the data stays text


def test_memory_bar_flags_over_commit(hybrid: dict) -> None:
    data = copy.deepcopy(hybrid)
    dev = data["plan"]["devices"][1]
    dev["memory_free_bytes"] = dev["memory_total_bytes"] // 2  # someone else took half the 5060 Ti
    html = render_html(data)
    cards = dict(re.findall(r'<g class="card" data-device="([^"]+)" data-overcommit="(\w+)"', html))
    assert cards == {"gpu0": "false", "gpu1": "true"}
    assert 'class="overcommit"' in html and "OVER by" in html and 'class="notfree"' in html


def test_views_and_numbers(pair: dict) -> None:
    html = render_html(pair)
    assert [k for k in re.findall(r'data-view="([^"]+)"', html)] == [k for k, _ in VIEWS]
    curve = pair["curves"][0]
    assert curve["service"] == "chat" and curve["n_layers"] == 80 and len(curve["sweep"]) == 79
    assert curve["device_ids"] == ["gpu0", "gpu1"] and curve["devices"] == ["RTX 4090", "RTX 3090"]
    planned = curve["marks"]["speed-aware (planned)"]
    svc = pair["plan"]["services"][0]
    assert planned["layers"] == svc["layers"] and planned["fits"]
    assert planned["decode"] == pytest.approx(svc["predicted"]["decode_tokens_per_s"], rel=0.01)
    # the planner's split is the fastest split that fits, on the curve it draws
    best_fit = max(p["decode"] for p in curve["sweep"] if p["fits"])
    assert planned["decode"] >= best_fit * 0.999
    # llama.cpp's memory-proportional default and the even split are points of the same sweep
    sweep = {tuple(p["layers"]): p for p in curve["sweep"]}
    for label in ("memory-proportional (llama.cpp default)", "even"):
        mark = curve["marks"][label]
        assert mark["layers"] != planned["layers"] and mark["decode"] == sweep[tuple(mark["layers"])]["decode"]
        assert mark["decode"] < planned["decode"]
    assert 'class="output-layer" data-device="gpu1"' in html


def test_compare_view() -> None:
    data = report_of_planning(planning_of_file(EXAMPLES / "hybrid-box.yaml"), "hybrid", ReportOptions())
    rows = {r["option"]: r for r in data["compare"]["rows"]}
    assert rows["this plan"]["gbp_per_month"] == 735.0
    assert rows["RTX 4090 + RTX 5060 Ti 16GB"]["aggregate_tokens_per_s"] == rows["this plan"]["aggregate_tokens_per_s"]
    html = render_html(data)
    assert html.count('class="option') == sum(1 for r in rows.values() if r["gbp_per_month"])


def test_measured_points_from_tune(tmp_path: Path) -> None:
    """A calibration from `gpumix tune` (each card alone) and a tune result (a measured split) put crosses on the
    curve of the service whose cards and layer count they match."""
    cal = tmp_path / "calibration.json"
    cal.write_text(json.dumps({"format_version": 1, "devices": [{
        "match": "rtx-4090", "name": "RTX 4090", "achieved_bandwidth_gb_per_s": 900.0, "per_token_overhead_s": 0.001,
        "measured": {"tokens_per_s": 24.0, "n_layers": 80, "model_bytes": 4.2e10}}]}))  # fmt: skip
    tune = tmp_path / "tune.json"
    tune.write_text(json.dumps({"devices": [{"name": "CUDA0", "label": "RTX 4090"}, {"name": "CUDA1", "label": "RTX 3090"}],
                                "points": [{"layers": [44, 36], "tokens_per_s": 16.9, "measured": True},
                                           {"layers": [30, 50], "tokens_per_s": 15.0, "measured": False}]}))  # fmt: skip
    options = ReportOptions(calibration=load_calibration(cal), calibration_file=cal, tune_result=tune, compare=False)
    data = build_report(EXAMPLES / "4090-3090-70b.yaml", options)
    measured = data["curves"][0]["measured"]
    assert sorted(m["tokens_per_s"] for m in measured) == [16.9, 24.0]  # the predicted-only point is not a measurement
    assert data["plan"]["calibration"] == str(cal)
    assert render_html(data).count('class="measured"') == 2
    # the calibration's measured 4090 changes the curve: the planned point is predicted with it
    plain = build_report(EXAMPLES / "4090-3090-70b.yaml", ReportOptions(compare=False))
    assert data["curves"][0]["marks"]["even"]["decode"] != plain["curves"][0]["marks"]["even"]["decode"]


def test_plan_json_input_finds_its_source(tmp_path: Path) -> None:
    plan_json = tmp_path / "plan.json"
    run = _gpumix("plan", "examples/4090-3090-70b.yaml", "-o", str(plan_json))
    assert run.returncode == 0, run.stderr
    data = build_report(plan_json, ReportOptions(compare=False))
    assert len(data["curves"]) == 1 and not data["notes"] and data["left_out"] is None
    # the plan.json's own split is the one marked as planned, even where re-planning now chooses another
    edited = json.loads(plan_json.read_text())
    edited["services"][0]["layers"] = [40, 40]
    plan_json.write_text(json.dumps(edited))
    data = build_report(plan_json, ReportOptions(compare=False))
    assert data["curves"][0]["marks"]["speed-aware (planned)"]["layers"] == [40, 40]
    moved = edited | {"source": "nowhere/gone.yaml"}
    plan_json.write_text(json.dumps(moved))
    data = build_report(plan_json, ReportOptions(compare=False))
    assert data["curves"] == [] and "names no plan file" in data["left_out"]
    html = render_html(data)
    assert html.count("names no plan file") == 2  # views 6 and 7 say why they are empty


def test_plan_json_uses_the_calibration_it_records(tmp_path: Path) -> None:
    """`gpumix report plan.json` predicts its curves with the calibration the plan was made with (not the one the
    environment would pick now); --calibration is for plan files; a recorded file that is gone is said."""
    cal = tmp_path / "calibration.json"
    cal.write_text(json.dumps({"format_version": 1, "devices": [{
        "match": "rtx-4090", "name": "RTX 4090", "achieved_bandwidth_gb_per_s": 700.0, "per_token_overhead_s": 0.002,
        "measured": {"tokens_per_s": 19.0, "n_layers": 80}}]}))  # fmt: skip
    plan_json = tmp_path / "plan.json"
    run = _gpumix("plan", "examples/4090-3090-70b.yaml", "--calibration", str(cal), "-o", str(plan_json))
    assert run.returncode == 0, run.stderr
    out = tmp_path / "r.html"
    run = _gpumix("report", str(plan_json), "-o", str(out), "--no-compare")
    assert run.returncode == 0, run.stderr
    html = out.read_text()
    assert html.count('class="measured"') == 1 and "was planned with" not in html  # the recorded file's point
    run = _gpumix("report", str(plan_json), "-o", str(out), "--calibration", str(cal))
    assert run.returncode == 2 and "already planned" in run.stderr.splitlines()[0]
    cal.unlink()
    run = _gpumix("report", str(plan_json), "-o", str(out), "--no-compare")
    assert run.returncode == 0, run.stderr
    assert "options are predicted with the packaged fit" in out.read_text()


@pytest.mark.parametrize("content, expected", [
    (None, "does not exist"),
    ("not json at all", "(not JSON)"),
    ('{"a": 1}', "it has no format_version"),
    ('{"format_version": 1, "feasible": true, "devices": [], "services": []}', "written by an older gpumix"),
    ('{"feasible": true, "devices": [], "services": []}', "it has no format_version"),
    ('{"format_version": 2, "feasible": "maybe", "devices": [], "services": []}', "not a valid plan.json: feasible"),
])  # fmt: skip
def test_bad_input_is_a_one_line_error(tmp_path: Path, content: str | None, expected: str) -> None:
    path = tmp_path / "plan.json"
    if content is not None:
        path.write_text(content)
    run = _gpumix("report", str(path), "-o", str(tmp_path / "r.html"))
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and str(path) in lines[0] and expected in lines[0], run.stderr
    assert len(lines) <= 2 and (len(lines) == 1 or lines[1].strip().startswith("hint:"))
    assert "Traceback" not in run.stderr and not (tmp_path / "r.html").exists()


def test_plan_html_option(tmp_path: Path) -> None:
    out = tmp_path / "cpu.html"
    run = _gpumix("plan", "examples/cpu-demo.yaml", "--html", str(out))
    assert run.returncode == 0, run.stderr
    html = out.read_text()
    assert 'data-device="cpu0"' in html and html.count('<tr data-service="') == 4  # placement + performance rows


def test_plan_fields_read_the_planners_later_fields(hybrid: dict) -> None:
    """Fields the planner issues add (KV budget, replica shares and streams, suggestions, prediction ranges):
    the views show them when present, and a plan without them still renders."""
    bare = copy.deepcopy(hybrid["plan"])
    for svc in bare["services"]:
        for key in ("kv_cache_tokens", "max_full_context_sequences", "replica_shares", "replica_concurrency"):
            svc.pop(key, None)
    bare.pop("suggestions", None)
    html = render_html({**hybrid, "plan": bare})
    assert 'class="kv"' not in html and "Suggestions" not in html and html.count('<tr data-service="chat"') == 2
    doc = copy.deepcopy(hybrid["plan"])
    for dev in doc["devices"]:
        dev["id"] = f"box/{dev['id']}"
    for svc in doc["services"]:
        svc["devices"] = [f"box/{i}" for i in svc["devices"]]
    chat = doc["services"][0]
    chat.update(kv_cache_tokens=65536, max_full_context_sequences=16, replica_shares=[0.7, 0.3],
                replica_concurrency=[11, 5])  # fmt: skip
    planned_prefill = (chat["predicted"]["prefill_tokens_per_s_low"], chat["predicted"]["prefill_tokens_per_s_high"])
    chat["predicted"].update(decode_tokens_per_s_low=80.0, decode_tokens_per_s_high=105.0)
    del chat["predicted"]["ttft_s_low"], chat["predicted"]["ttft_s_high"]  # the [low, high] form instead
    chat["predicted"]["ttft_s_range"] = [0.05, 0.2]
    chat["slo"] = [{"metric": "decode_tokens_per_s", "target": 50, "predicted": 90.0, "met": True, "margin": 0.8,
                    "predicted_low": 70.5, "predicted_high": 111.0}]  # fmt: skip
    doc["suggestions"] = [{"service": "chat", "kind": "quant", "change": "use q4_k_m", "feasible": True,
                           "decode_tokens_per_s": 120.5, "gbp_per_month": 735}]  # fmt: skip
    assert pf.service_device_ids(doc, chat) == ["box/gpu0"]
    assert pf.service_workload(chat)["kv_cache_tokens"] == 65536
    assert pf.predicted_range(chat, "decode_tokens_per_s") == (80.0, 105.0)
    # The planner's own 80 % range (issue 13), as the plan records it.
    assert pf.predicted_range(chat, "prefill_tokens_per_s") == planned_prefill and None not in planned_prefill
    assert planned_prefill[0] < chat["predicted"]["prefill_tokens_per_s"] < planned_prefill[1]
    html = render_html({**hybrid, "plan": doc})
    assert 'data-device="box/gpu0"' in html and "65,536 tokens" in html and "16 × 8,192" in html
    assert "70% / 30%<br>11 / 5 streams" in html and "(80.0–105.0)" in html and "(50–200)" in html
    assert "(70.5–111.0)" in html
    assert "chat: <b>quant</b> use q4_k_m" in html and "120.5 t/s" in html and "£735/month" in html
    with pytest.raises(GpumixError):
        build_report(Path("/nonexistent/plan.yaml"))


def test_every_lint_code_says_what_to_do() -> None:
    """View 8 pairs each warning with what to do: every code in the lint table has an action."""
    from gpumix.plan import lint
    from gpumix.report.html import WARNING_ACTIONS

    codes = re.findall(r"^\| (GPX\d{3}) \|", lint.__doc__ or "", re.M)
    assert len(codes) >= 21 and [c for c in codes if c not in WARNING_ACTIONS] == []
