"""`gpumix plan / compare / explain` through the real CLI entry point (subprocess: exit codes and output)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from gpumix.plan.result import Plan

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def _gpumix(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpumix", *args], capture_output=True, text=True, cwd=ROOT, timeout=120,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "HOME": str(ROOT / ".pytest_cache")},
    )  # fmt: skip


def test_plan_json_has_the_mandatory_fields_and_writes_the_artifact(tmp_path):
    out = tmp_path / "plan.json"
    result = _gpumix("plan", str(EXAMPLES / "4090-3090-70b.yaml"), "--json", "-o", str(out))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    for key in ("feasible", "reasons", "services", "devices", "warnings", "cost"):
        assert key in data
    svc = data["services"][0]
    for key in ("name", "model", "engine", "mode", "devices", "split", "layers", "memory_bytes"):
        assert key in svc
    for key in ("decode_tokens_per_s", "aggregate_tokens_per_s", "prefill_tokens_per_s", "ttft_s"):
        assert svc["predicted"][key] > 0
    for key in ("index", "name", "memory_total_bytes", "memory_planned_bytes"):
        assert key in data["devices"][0]
    assert {"gbp_per_month", "gbp_per_million_tokens"} <= set(data["cost"])
    assert Plan.model_validate_json(out.read_text()).service("chat").layers == svc["layers"]


def test_plan_table_and_objective_flag():
    result = _gpumix("plan", str(EXAMPLES / "hybrid-box.yaml"), "--objective", "throughput")
    assert result.returncode == 0, result.stderr
    assert "RTX 5060 Ti 16GB" in result.stdout and "chat" in result.stdout and "£735/month" in result.stdout


def test_bad_file_is_one_line_error_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("services:\n  - name: chat\n    model: llama-3.1-8b\n    qaunt: fp8\n")
    result = _gpumix("plan", str(bad))
    assert result.returncode == 2
    assert f"{bad}:4: unknown key 'services[0].qaunt'; did you mean 'quant'?" in result.stderr
    assert "Traceback" not in result.stderr
    missing = _gpumix("plan", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_compare_default_and_given_options():
    result = _gpumix("compare", str(EXAMPLES / "3090-3060-70b.yaml"), "--option", "RTX 3090 + RTX 3060 12GB",
                     "--option", "RTX PRO 6000", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = {r["option"]: r for r in json.loads(result.stdout)}
    assert rows["RTX 3090 + RTX 3060 12GB"]["feasible"] is False
    assert rows["RTX PRO 6000"]["feasible"] is True and "best value" in rows["RTX PRO 6000"]["verdict"]
    table = _gpumix("compare", str(EXAMPLES / "hybrid-box.yaml"))
    assert table.returncode == 0 and "H100 PCIe" in table.stdout and "best value" in table.stdout


def test_explain_lists_the_alternatives():
    result = _gpumix("explain", str(EXAMPLES / "4090-3090-70b.yaml"), "chat")
    assert result.returncode == 0, result.stderr
    assert "speed-aware layer split" in result.stdout and "llama.cpp default split" in result.stdout
    unknown = _gpumix("explain", str(EXAMPLES / "4090-3090-70b.yaml"), "chatt")
    assert unknown.returncode == 2 and "did you mean 'chat'" in unknown.stderr


def test_plan_table_and_explain_show_kv_tokens_and_replica_shares():
    table = _gpumix("plan", str(EXAMPLES / "4090-3060-8b-throughput.yaml"))
    assert table.returncode == 0, table.stderr
    assert "KV tokens (full seqs)" in table.stdout and "131,072 (16 of 16)" in table.stdout
    assert "streams 14/2" in table.stdout
    explained = _gpumix("explain", str(EXAMPLES / "4090-3060-8b-throughput.yaml"), "chat")
    assert explained.returncode == 0, explained.stderr
    assert "KV: 131,072 tokens = 16 sequences of 8,192 tokens at once (concurrency 16; predictions use 16)" in (
        explained.stdout
    )
    assert "replica on gpu0: 88% of the streams (14), KV 114,688 tokens = 14 sequences" in explained.stdout
    hybrid = _gpumix("plan", str(EXAMPLES / "hybrid-box.yaml"))
    assert "GPX017-kv-below-concurrency chat" in hybrid.stdout
    assert "holds 8 sequences of 8,192 tokens at once, not the 16 its concurrency asks" in hybrid.stdout
