"""`gpumix models [QUERY]`, `gpumix models show REF`, `gpumix quants`: the model and quantisation catalogs;
`gpumix synth`: a synthetic GGUF of a catalog model (logic in gpumix.tune.synth)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from gpumix.cli.output import add_row, esc, say, show, stdout_console
from gpumix.errors import GpumixError
from gpumix.models.catalog import all_quants, load_model, search_models
from gpumix.models.spec import ModelSpec
from gpumix.units import fmt_gib


def _billions(count: float | None) -> str:
    return "-" if count is None else f"{count / 1e9:.2f}B"


def _attention(spec: ModelSpec) -> str:
    if not spec.n_layers:
        return "-"
    if not spec.swa_layers or not any(spec.swa_layers):
        return "full"
    return f"{sum(spec.swa_layers)}/{spec.n_layers} SWA {spec.sliding_window}"


def _list_models(query: str | None, as_json: bool) -> None:
    specs = search_models(query or "")
    if as_json:
        print(json.dumps([s.model_dump(mode="json", exclude={"layer_weight_bytes"}) for s in specs], indent=2))
        return
    if not specs:
        raise GpumixError(f"no catalog model matches '{query}'", hint="run `gpumix models` for the full list")
    table = Table(title="models")
    table.add_column("id", no_wrap=True)
    for col in ("kind", "params", "active", "layers", "kv", "context", "attention"):
        table.add_column(col)
    for s in specs:
        kv = f"{s.n_kv_heads}x{s.head_dim}" if s.n_layers else "-"
        active = _billions(s.params_active) if s.params_active else "-"
        add_row(table, s.id, s.kind, _billions(s.params_total), active, str(s.n_layers or "-"), kv, str(s.context_length or "-"), _attention(s))
    show(table)


def _show_model(ref: str, as_json: bool) -> None:
    spec = load_model(ref)
    if as_json:
        data = spec.model_dump(mode="json")
        if spec.layer_weight_bytes is not None:
            data["total_weight_bytes"] = sum(spec.layer_weight_bytes) + (spec.non_layer_weight_bytes or 0)
        print(json.dumps(data, indent=2))
        return
    table = Table(title=Text(spec.name), show_header=False)
    table.add_column("field")
    table.add_column("value")
    skip = {"layer_weight_bytes", "swa_layers", "aliases", "kv_heads_per_layer"}
    for key, value in spec.model_dump().items():
        if key not in skip and value not in (None, (), "", 0):
            add_row(table, key, str(value))
    add_row(table, "attention", _attention(spec))
    if spec.aliases:
        add_row(table, "aliases", ", ".join(spec.aliases))
    if spec.layer_weight_bytes is not None:
        layers = spec.layer_weight_bytes
        add_row(table, "layer weights", f"{fmt_gib(sum(layers))} over {len(layers)} layers (min {min(layers, default=0):,} / max {max(layers, default=0):,} bytes)")
        add_row(table, "other weights", fmt_gib(spec.non_layer_weight_bytes or 0) + " (embeddings, output, norms)")
        add_row(table, "total weights", fmt_gib(sum(layers) + (spec.non_layer_weight_bytes or 0)))
    show(table)


def models(
    query: str = typer.Argument(None, help="Filter by name, or `show` followed by REF (catalog name, .gguf, config.json)."),
    ref: str = typer.Argument(None, help="With `show`: the model to describe.", show_default=False),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable."),
) -> None:
    """List catalog models (optionally matching QUERY), or `gpumix models show REF` for one model or file."""
    if query == "show":
        if not ref:
            raise GpumixError("`gpumix models show` needs a model", hint="e.g. gpumix models show llama-3-8b  or  ./model.gguf")
        _show_model(ref, as_json)
        return
    if ref:
        raise GpumixError(f"unexpected argument '{ref}'", hint="use `gpumix models QUERY` or `gpumix models show REF`")
    _list_models(query, as_json)


def quants(as_json: bool = typer.Option(False, "--json", help="Machine-readable.")) -> None:
    """List weight formats with their true bits per weight."""
    specs = all_quants()
    if as_json:
        print(json.dumps([q.model_dump(mode="json") for q in specs], indent=2))
        return
    table = Table(title="quantisations")
    for col in ("id", "bits/weight", "file bpw", "block", "compute", "engines", "aliases"):
        table.add_column(col)
    for q in specs:
        block = f"{q.block_bytes:g} B / {q.block_weights}" if q.block_weights > 1 else f"{q.block_bytes:g} B"
        file_bpw = f"{q.file_bits_per_weight:.4g}" if q.file_bits_per_weight else "-"
        add_row(table, q.id, f"{q.bits_per_weight:.4g}", file_bpw, block, q.compute_dtype, ",".join(q.engines), ", ".join(q.aliases))
    show(table)


def synth(
    model: str = typer.Option(..., "--model", "-m", help="Catalog model id (or an HF config.json) to synthesise."),
    quant: str = typer.Option("q4_k_m", "--quant", "-q", help="f32 | f16 | bf16, or a llama.cpp quant (q4_k_m, q8_0, ...)."),
    out: Path = typer.Option(None, "--out", "-o", help="Write the GGUF here (default: print the cached file's path)."),
    seed: int = typer.Option(0, "--seed", help="Random seed of the weights (the same seed gives the same file)."),
    threads: int = typer.Option(None, "--threads", "-t", help="llama-quantize threads (default: all CPUs)."),
    force: bool = typer.Option(False, "--force", help="Make the file again even if it is cached."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Write a GGUF with a catalog model's exact tensors and metadata and random weights (no download).

    Speed and memory depend on shapes, not values: llama-server and llama-bench on this file measure the
    architecture honestly. Float types are written directly; other formats by llama.cpp's llama-quantize.
    Cached in ~/.cache/gpumix/synth."""
    from gpumix.tune.synth import synthesize

    progress = None if as_json else Progress(
        TextColumn("[bold]synth[/]"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(),
        TextColumn("{task.description}"), console=stdout_console(), transient=True,
    )  # fmt: skip

    def report(message: str, fraction: float | None) -> None:
        if progress is not None:
            progress.update(task, description=esc(message), completed=fraction)

    if progress is not None:
        with progress:
            task = progress.add_task("starting", total=1.0)
            result = synthesize(model, quant, out, seed=seed, force=force, threads=threads, progress=report)
    else:
        result = synthesize(model, quant, out, seed=seed, force=force, threads=threads)
    if as_json:
        print(json.dumps({"path": str(result.path), "cache_path": str(result.cache_path), "model": result.model_id,
                          "quant": result.quant, "size_bytes": result.size_bytes, "cached": result.cached}))  # fmt: skip
        return
    how = "from the cache" if result.cached else "written"
    say(f"{esc(result.model_id)} {esc(result.quant)}: {esc(result.path)} ({fmt_gib(result.size_bytes)}, {how})")


def register(app: typer.Typer) -> None:
    app.command("models")(models)
    app.command("quants")(quants)
    app.command("synth")(synth)
