"""`gpumix synth`: make (and cache) a synthetic GGUF of a catalog model in any llama.cpp weight format.

Float formats are written directly (gpumix.models.synth); every other format is made from an F16 file by
llama.cpp's own `llama-quantize`, so a Q4_K_M synthetic file mixes Q4_K/Q6_K tensors exactly as a real one does.
Files are cached under ~/.cache/gpumix/synth (or $GPUMIX_CACHE_DIR/synth), keyed by model id, quant, seed,
generator version and a hash of the shapes, so a catalog change or a new generator makes a new file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gpumix.errors import GpumixError
from gpumix.estimate.memory import total_weight_bytes
from gpumix.hardware.discovery import read_meminfo
from gpumix.launch.llamacpp import cache_dir, require_llama_cpp
from gpumix.models.catalog import load_model, resolve_quant
from gpumix.models.spec import ModelSpec, QuantSpec
from gpumix.models.synth import FLOAT_TYPES, GENERATOR_VERSION, synth_layout, write_float_gguf
from gpumix.units import GB

Progress = Callable[[str, float | None], None]

# gpumix quant id -> llama-quantize type name (tools/quantize/quantize.cpp QUANT_OPTIONS)
LLAMA_QUANTIZE_TYPES = {
    "q8_0": "Q8_0",
    "q6_k": "Q6_K",
    "q5_0": "Q5_0",
    "q5_1": "Q5_1",
    "q5_k_m": "Q5_K_M",
    "q4_k_m": "Q4_K_M",
    "q4_k_s": "Q4_K_S",
    "q4_0": "Q4_0",
    "q4_1": "Q4_1",
    "iq4_nl": "IQ4_NL",
    "iq4_xs": "IQ4_XS",
    "q3_k_m": "Q3_K_M",
    "q2_k": "Q2_K",
    "mxfp4": "MXFP4_MOE",
}
# llama-quantize holds one tensor at a time: its F16 bytes, an F32 copy and an F32 work buffer (quantize.cpp
# llama_model_quantize_impl: read_data, f32_conv_buf, work), so ~10 bytes per element of the largest tensor.
QUANTIZE_BYTES_PER_ELEMENT = 10
DISK_MARGIN = 1.05  # headers, vocabulary and filesystem slack
_QUANTIZE_LINE = re.compile(r"^\[\s*(\d+)/\s*(\d+)\]")
# What _make leaves behind when its process is killed (SIGKILL, a timeout): the F16 intermediate
# (<key>.f16-<pid>.gguf, and its own .partial) and llama-quantize's output (<key>.gguf.<pid>.partial).
_LEFTOVER = re.compile(r"^.+\.(?:f16-(\d+)\.gguf(?:\.partial)?|gguf\.(\d+)\.partial)$")


@dataclass(frozen=True)
class SynthResult:
    path: Path  # the file the caller asked for (-o), else the cached file
    cache_path: Path
    model_id: str
    quant: str
    size_bytes: int
    cached: bool  # True: made by an earlier run


def synth_cache_dir() -> Path:
    return cache_dir() / "synth"


def synth_model(ref: str) -> ModelSpec:
    """The architecture to synthesise: a catalog id/alias or an HF config.json (not a GGUF: that has weights)."""
    if str(ref).lower().endswith(".gguf"):
        raise GpumixError(f"{ref} is already a GGUF file", hint="gpumix synth takes a catalog model id, e.g. llama-3.2-1b")
    return load_model(ref)


def synth_quant(name: str) -> QuantSpec:
    quant = resolve_quant(name)
    if quant.id not in FLOAT_TYPES and quant.id not in LLAMA_QUANTIZE_TYPES:
        raise GpumixError(
            f"'{quant.id}' is not a llama.cpp GGUF format (engines: {', '.join(quant.engines)})",
            hint=f"use one of {', '.join((*FLOAT_TYPES, *LLAMA_QUANTIZE_TYPES))}",
        )
    return quant


def cache_key(spec: ModelSpec, quant: QuantSpec, seed: int) -> str:
    shape_fields = spec.model_dump(
        mode="json", include={"architecture", "n_layers", "hidden_size", "n_heads", "n_kv_heads", "head_dim",
                              "intermediate_size", "vocab_size", "context_length", "sliding_window", "swa_layers",
                              "n_experts", "n_experts_active", "tied_embeddings", "rope_theta", "rms_norm_eps"},
    )  # fmt: skip
    digest = hashlib.sha256(json.dumps(shape_fields, sort_keys=True).encode()).hexdigest()[:10]
    safe_id = re.sub(r"[^a-z0-9._-]", "_", spec.id.lower())
    return f"{safe_id}-{quant.id}-s{seed}-g{GENERATOR_VERSION}-{digest}"


def synth_cache_path(spec: ModelSpec, quant: QuantSpec, seed: int = 0) -> Path:
    return synth_cache_dir() / f"{cache_key(spec, quant, seed)}.gguf"


def expected_file_bytes(spec: ModelSpec, quant: QuantSpec) -> int:
    layout = synth_layout(spec)
    if quant.id in FLOAT_TYPES:
        return layout.float_bytes(quant.id)
    return int(total_weight_bytes(spec, quant))


def check_resources(spec: ModelSpec, quant: QuantSpec, folder: Path, out: Path | None = None) -> None:
    """Refuse, before writing anything, a model the disk or RAM cannot take."""
    layout = synth_layout(spec)
    final = expected_file_bytes(spec, quant)
    intermediate = 0 if quant.id in FLOAT_TYPES else layout.float_bytes("f16")
    need_disk = int((final + intermediate) * DISK_MARGIN)
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if need_disk > free:
        raise GpumixError(
            f"synthesising {spec.id} {quant.id} needs {need_disk / GB:.1f} GB of disk in {folder} "
            f"({'an F16 intermediate and ' if intermediate else ''}the {final / GB:.1f} GB result); "
            f"{free / GB:.1f} GB free",
            hint="free space there, point $GPUMIX_CACHE_DIR at a bigger disk, or pick a smaller model or quant",
        )
    if out is not None and out.parent.exists():
        out_free = shutil.disk_usage(out.parent).free
        same_fs = out.parent.stat().st_dev == folder.stat().st_dev
        if not same_fs and final * DISK_MARGIN > out_free:
            raise GpumixError(
                f"{out} needs {final / GB:.1f} GB; {out.parent} has {out_free / GB:.1f} GB free",
                hint="write it elsewhere with -o, or use the cached file without -o",
            )
    if intermediate:
        largest = max(t.n_elements for t in layout.tensors)
        need_ram = largest * QUANTIZE_BYTES_PER_ELEMENT
        _total, available = read_meminfo()
        if need_ram > available:
            raise GpumixError(
                f"quantising {spec.id} needs ~{need_ram / GB:.1f} GB of RAM for its largest tensor "
                f"({largest:,} weights); {available / GB:.1f} GB available",
                hint="close other programs, synthesise on a machine with more RAM, or use --quant f16",
            )


def synthesize(
    model_ref: str,
    quant_name: str,
    out: str | Path | None = None,
    *,
    seed: int = 0,
    force: bool = False,
    threads: int | None = None,
    progress: Progress | None = None,
) -> SynthResult:
    """A synthetic GGUF of `model_ref` in `quant_name`; cached, then copied to `out` when given."""
    spec = synth_model(model_ref)
    quant = synth_quant(quant_name)
    say = progress or (lambda _msg, _frac: None)
    cached_path = synth_cache_path(spec, quant, seed)
    out_path = Path(out).expanduser() if out is not None else None
    if out_path is not None and out_path.suffix.lower() != ".gguf":
        raise GpumixError(f"-o {out_path}: the output must be a .gguf file")
    if out_path is not None and not out_path.parent.is_dir():
        raise GpumixError(f"-o {out_path}: folder {out_path.parent} does not exist")
    was_cached = cached_path.is_file() and not force
    if not was_cached:
        remove_leftovers(cached_path.parent)
        check_resources(spec, quant, cached_path.parent, out_path)
        _make(spec, quant, cached_path, seed, threads, say)
    final = cached_path
    if out_path is not None and out_path.resolve() != cached_path.resolve():
        say(f"copying to {out_path}", None)
        _place_copy(cached_path, out_path)
        final = out_path
    return SynthResult(final, cached_path, spec.id, quant.id, final.stat().st_size, was_cached)


def remove_leftovers(folder: Path) -> list[Path]:
    """Delete the intermediates of syntheses whose process is gone (an F16 file is 2 bytes per weight: 16 GB for
    an 8B model), so an interrupted run does not keep the disk full. Files of a live process are left alone."""
    removed = []
    for path in folder.glob("*") if folder.is_dir() else ():
        match = _LEFTOVER.match(path.name)
        if match is None or _pid_alive(int(match[1] or match[2])):
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _make(spec: ModelSpec, quant: QuantSpec, target: Path, seed: int, threads: int | None, say: Progress) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if quant.id in FLOAT_TYPES:
        write_float_gguf(spec, target, quant.id, seed, progress=say)
        return
    f16 = target.with_name(f"{target.stem}.f16-{os.getpid()}.gguf")
    try:
        write_float_gguf(spec, f16, "f16", seed, progress=lambda msg, frac: say("writing F16 weights", frac))
        run_llama_quantize(f16, target, LLAMA_QUANTIZE_TYPES[quant.id], threads, say)
    finally:
        f16.unlink(missing_ok=True)


def run_llama_quantize(source: Path, target: Path, type_name: str, threads: int | None, say: Progress) -> None:
    """llama-quantize SOURCE TARGET TYPE THREADS, with its per-tensor progress; TARGET appears only when done."""
    binary = require_llama_cpp().binary("llama-quantize")
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    argv = [str(binary), str(source), str(partial), type_name, str(threads or os.cpu_count() or 1)]
    tail: list[str] = []
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
        assert proc.stdout is not None
        for line in proc.stdout:
            tail = (tail + [line.rstrip()])[-12:]
            match = _QUANTIZE_LINE.match(line.strip())
            if match:
                say(f"quantizing to {type_name}", int(match[1]) / int(match[2]))
        if proc.wait() != 0:
            raise GpumixError(
                f"llama-quantize {type_name} failed (exit {proc.returncode}) on {source.name}",
                hint="\n".join(tail[-6:]),
            )
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def _place_copy(source: Path, dest: Path) -> None:
    """A hard link when on the same filesystem (instant, no extra space), else a copy via a temporary name."""
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
