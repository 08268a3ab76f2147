"""`gpumix models`, `gpumix models show`, `gpumix quants`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from models_fixtures import write_gguf
from typer.testing import CliRunner

from gpumix.cli.main import app

runner = CliRunner()


def test_models_list_json_and_filter() -> None:
    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    ids = [m["id"] for m in json.loads(result.stdout)]
    assert "llama-3-8b" in ids and "whisper-large-v3" in ids
    result = runner.invoke(app, ["models", "qwen", "--json"])
    assert {m["id"] for m in json.loads(result.stdout)} == {
        "qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-3b", "qwen2.5-7b", "qwen2.5-14b", "qwen2.5-32b", "qwen2.5-72b",
        "qwen2.5-coder-32b", "qwen3-0.6b"}


def test_models_table() -> None:
    result = runner.invoke(app, ["models", "gemma"])
    assert result.exit_code == 0 and "gemma-3-270m" in result.stdout and "SWA" in result.stdout


def test_models_show_catalog_and_gguf(tmp_path: Path) -> None:
    result = runner.invoke(app, ["models", "show", "Llama 3 8B", "--json"])
    data = json.loads(result.stdout)
    assert (data["id"], data["n_layers"], data["n_kv_heads"]) == ("llama-3-8b", 32, 8)
    path = write_gguf(tmp_path / "tiny.gguf")
    result = runner.invoke(app, ["models", "show", str(path), "--json"])
    data = json.loads(result.stdout)
    assert data["total_weight_bytes"] == sum(data["layer_weight_bytes"]) + data["non_layer_weight_bytes"]
    result = runner.invoke(app, ["models", "show", str(path)])
    assert result.exit_code == 0 and "layer weights" in result.stdout


def test_quants_json() -> None:
    result = runner.invoke(app, ["quants", "--json"])
    by_id = {q["id"]: q for q in json.loads(result.stdout)}
    assert by_id["q4_0"]["bits_per_weight"] == 4.5 and by_id["q8_0"]["bits_per_weight"] == 8.5


def test_errors_are_one_line_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf at all")
    for args in (["models", "show", "Gemma 4 26B"], ["models", "show", str(bad)], ["models", "show"]):
        proc = subprocess.run([sys.executable, "-m", "gpumix", *args], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("error:") and "Traceback" not in proc.stderr
