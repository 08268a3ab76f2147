"""Turn a GGUF file into a Hugging Face safetensors directory that vLLM loads (vLLM 0.32 cannot read GGUF).

Runs inside gpumix's vLLM venv (it imports torch and transformers, which gpumix's own venv does not have):

    <vllm venv>/bin/python .../gpumix/launch/hf_from_gguf.py MODEL.gguf OUT_DIR [--dtype bfloat16]

(run as a file: it imports nothing of gpumix). transformers reads the GGUF's architecture, tokenizer and chat
template, dequantises every tensor (a Q4_1 or Q4_K_M file becomes the bf16 weights those blocks encode — the
quantisation error stays, the format goes) and `save_pretrained` writes config.json, model.safetensors, the
tokenizer files and chat_template.jinja. The directory is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path


def convert(gguf: Path, out_dir: Path, dtype_name: str = "bfloat16") -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    dtype = getattr(torch, dtype_name)
    started = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=dtype,
        quantization_config=GgufConfig(gguf_file=gguf.name, dequantize=True),
    )  # fmt: skip
    # Dequantised weights are plain tensors; without this transformers refuses to save a "GGUF-quantised" model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    config_path = tmp / "config.json"
    config = json.loads(config_path.read_text())
    config.pop("quantization_config", None)  # a null here reads as "quantised by nothing" to some loaders
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    info = {
        "source": str(gguf),
        "source_bytes": gguf.stat().st_size,
        "dtype": dtype_name,
        "architecture": (config.get("architectures") or ["?"])[0],
        "num_hidden_layers": config.get("num_hidden_layers"),
        "seconds": round(time.monotonic() - started, 1),
    }
    (tmp / "gpumix-convert.json").write_text(json.dumps(info, indent=2) + "\n")
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gguf", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    args = parser.parse_args(argv)
    info = convert(args.gguf.resolve(), args.out_dir.resolve(), args.dtype)
    print("GPUMIX_CONVERTED " + json.dumps(info), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
