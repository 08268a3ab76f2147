"""`gpumix engines ...`: install and list the engines gpumix drives."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from gpumix.cli.calibration_option import CALIBRATION_HELP, plan_calibration
from gpumix.cli.output import add_row, say, show, stdout_console
from gpumix.cli.params import choice
from gpumix.errors import GpumixError
from gpumix.launch import llamacpp

engines_app = typer.Typer(help="Install and list inference engines (llama.cpp is built by gpumix).")


@engines_app.callback(invoke_without_command=True)
def engines_list(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Machine-readable.")) -> None:
    """List installed engines and where they are."""
    if ctx.invoked_subcommand is not None:
        return
    install = llamacpp.find_llama_cpp()
    rows: list[dict[str, Any]] = [
        {
            "engine": "llama.cpp",
            "installed": install is not None,
            "version": install.version if install else None,
            "bin_dir": str(install.bin_dir) if install else None,
            "source": install.source if install else None,
        }
    ]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="engines")
    for col in ("engine", "installed", "version", "where"):
        table.add_column(col)
    for row in rows:
        add_row(table, row["engine"], "yes" if row["installed"] else "no", row["version"] or "-", row["bin_dir"] or "run `gpumix engines install llama.cpp`")
    show(table)
    say("vllm, tei, whisper and image servers are rendered as commands/exports; install them yourself where a GPU is present.")


@engines_app.command("install")
def engines_install(
    engine: str = typer.Argument("llama.cpp", help="Only llama.cpp is built by gpumix."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if a cached build exists."),
    backend: str = typer.Option("auto", "--backend", help="auto | cpu | cuda"),
) -> None:
    """Build llama.cpp (llama-server, llama-bench, ggml-rpc-server) from the pinned sdist; cached."""
    if engine not in ("llama.cpp", "llamacpp", "llama-cpp"):
        raise GpumixError(f"unknown engine '{engine}'", hint="gpumix builds only llama.cpp; vLLM/TEI are run from their own images")
    backend = choice(backend, ("auto", "cpu", "cuda"), "--backend")
    options = llamacpp.default_build_options() if backend == "auto" else llamacpp.BuildOptions(backend=backend)
    with Progress(TextColumn("[bold]llama.cpp[/]"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(), TextColumn("{task.description}", markup=False), console=stdout_console(), transient=False) as bar:
        task = bar.add_task("starting", total=1.0)

        def report(message: str, fraction: float | None) -> None:
            if fraction is None:
                bar.update(task, description=message)
            else:
                bar.update(task, description=message, completed=fraction)

        install = llamacpp.install_llama_cpp(options, progress=report, force=force)
    say(Text(f"llama.cpp {install.version}: {install.bin_dir}"))


def export(
    fmt: Annotated[str, typer.Argument(help="compose | caddy | nginx | litellm | systemd | commands")],
    plan_path: Annotated[Path, typer.Option("--plan", "-p", help="plan.json from `gpumix plan` (or a plan file, planned first)")],
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="directory to write into (default: print)")] = None,
    base_port: int = typer.Option(8001, "--base-port", help="first backend port; the rest follow in plan order"),
    front_port: int = typer.Option(8080, "--port", help="front port of the caddy/nginx proxy"),
    stagger_s: float = typer.Option(10.0, "--stagger-s", help="seconds between GPU service starts"),
    calibration: Path | None = typer.Option(None, "--calibration", help=CALIBRATION_HELP),
) -> None:
    """Write launch artifacts for a plan: compose, caddy, nginx, litellm, systemd or a commands script."""
    from gpumix.launch.export import render_export, write_export
    from gpumix.run.up import load_plan

    plan = load_plan(plan_path, *plan_calibration(plan_path, calibration))
    files = render_export(plan, fmt, base_port=base_port, front_port=front_port, stagger_s=stagger_s)
    if out_dir is None:
        for name, content in files.items():
            if len(files) > 1:
                print(f"# ---- {name}")
            print(content, end="")
        return
    for path in write_export(files, out_dir):
        say(Text(f"wrote {path}"))


def register(app: typer.Typer) -> None:
    app.add_typer(engines_app, name="engines")
    app.command("export")(export)
