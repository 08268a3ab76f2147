"""`gpumix estimate` through the CLI: JSON shape, fit verdicts, splits and bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpumix", "estimate", *args], capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def test_json_has_the_documented_fields():
    out = _cli("--gpu", "RTX 3090", "--model", "llama-3-8b", "--quant", "q4_k_m", "--ctx", "8192", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["fits"] is True
    dev = data["devices"][0]
    assert dev["name"] == "RTX 3090"
    assert set(dev["breakdown"]) == {"weights_bytes", "kv_cache_bytes", "compute_bytes", "overhead_bytes"}
    assert dev["memory_bytes"] == sum(dev["breakdown"].values())
    # 8192 tokens × 128 KiB/token for Llama 3 8B in f16.
    assert dev["breakdown"]["kv_cache_bytes"] == 8192 * 128 * 1024
    pred = data["predicted"]
    assert 0 < pred["decode_tokens_per_s"] <= pred["bandwidth_bound_tokens_per_s"]
    assert pred["prefill_tokens_per_s"] > pred["decode_tokens_per_s"] and pred["ttft_s"] > 0


def test_70b_on_3090_plus_3060_does_not_fit_and_says_by_how_much():
    out = _cli("--gpu", "RTX 3090", "--gpu", "RTX 3060 12GB", "--model", "llama-3.3-70b", "--quant", "q4_k_m",
               "--tensor-split", "2,1", "--json")  # fmt: skip
    assert out.returncode == 1
    data = json.loads(out.stdout)
    assert data["fits"] is False
    assert sum(d["shortfall_bytes"] for d in data["devices"]) > 4 * 2**30


def test_layer_split_default_is_speed_aware_not_memory_proportional():
    base = ["--gpu", "RTX 4090", "--gpu", "RTX 3060 12GB", "--model", "qwen2.5-32b", "--quant", "q4_k_m", "--json"]
    best = json.loads(_cli(*base).stdout)
    by_memory = json.loads(_cli(*base, "--tensor-split", "24,12").stdout)
    assert best["split_source"].startswith("gpumix")
    assert best["devices"][0]["layers"] > by_memory["devices"][0]["layers"]
    assert best["predicted"]["decode_tokens_per_s"] > by_memory["predicted"]["decode_tokens_per_s"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gpu", "RTX 9999", "--model", "llama-3-8b", "--quant", "q4_k_m"], "RTX 9999"),
        (["--gpu", "RTX 3090", "--model", "llama-99b", "--quant", "q4_k_m"], "llama-99b"),
        (["--gpu", "RTX 3090", "--model", "llama-3-8b", "--quant", "q9_z"], "q9_z"),
        (["--gpu", "RTX 3090", "--model", "llama-3-8b"], "--quant"),
        (["--gpu", "RTX 3090", "--gpu", "RTX 3060 12GB", "--model", "llama-3-8b", "--quant", "q4_0", "-ts", "1,x"],
         "tensor-split"),
        (["--model", "llama-3-8b", "--quant", "q4_0"], "no device"),
    ],
)
def test_bad_input_is_a_one_line_error(args, message):
    out = _cli(*args)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert message in out.stderr


def test_a_side_service_needs_no_quant_and_shows_its_sourced_parts():
    """SDXL on sd-server: the parts add up to the total on each card; the 5060 Ti holds it, an 8 GB card does not."""
    out = _cli("--gpu", "RTX 5060 Ti 16GB", "--gpu", "RTX 3070", "--model", "sdxl", "--json")
    assert out.returncode == 0, out.stderr  # it fits on one of the cards: a service runs whole on one
    data = json.loads(out.stdout)
    assert data["kind"] == "image" and data["engine"] == "image" and data["fits"] is True
    on_5060, on_3070 = data["devices"]
    assert on_5060["fits"] and not on_3070["fits"]
    assert on_5060["memory_bytes"] == sum(on_5060["breakdown"].values()) == sum(p["size_bytes"] for p in data["parts"])
    assert all(p["source"] for p in data["parts"])
    assert {p["kind"] for p in data["parts"]} == {"weights", "compute", "overhead"}
    alone = _cli("--gpu", "RTX 3070", "--model", "sdxl")
    assert alone.returncode == 1 and "short" in alone.stdout and "VAE decode compute buffer" in alone.stdout


def test_image_service_estimate_gives_its_low_memory_setting():
    out = _cli("--gpu", "RTX 5060 Ti 16GB", "--model", "sdxl", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    low = data["low_memory"]
    assert low["args"] == ["--diffusion-fa", "--vae-tiling", "--vae-conv-direct"] and "NOT MEASURED" in low["speed_note"]
    (dev,) = low["devices"]
    assert dev["fits"] and dev["memory_bytes"] < data["devices"][0]["memory_bytes"] - 2.8e9
