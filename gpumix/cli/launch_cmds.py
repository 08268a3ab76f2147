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
from gpumix.launch import llamacpp, vllm_install

engines_app = typer.Typer(help="Install and list inference engines (llama.cpp is built by gpumix, vLLM gets a cached venv).")


@engines_app.callback(invoke_without_command=True)
def engines_list(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Machine-readable.")) -> None:
    """List installed engines and where they are."""
    if ctx.invoked_subcommand is not None:
        return
    rows = _engine_rows()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="engines")
    for col in ("engine", "installed", "version", "where"):
        table.add_column(col)
    for row in rows:
        where = row["where"] or f"run `gpumix engines install {row['engine'].split(' ')[0]}`"
        add_row(table, row["engine"], "yes" if row["installed"] else "no", row["version"] or "-", where)
    show(table)
    say("tei, whisper and image servers are rendered as commands/exports only; install them yourself where a GPU is present.")


def _engine_rows() -> list[dict[str, Any]]:
    install = llamacpp.find_llama_cpp()
    rows: list[dict[str, Any]] = [
        {"engine": "llama.cpp", "installed": install is not None, "version": install.version if install else None,
         "where": str(install.bin_dir) if install else None, "source": install.source if install else None}]  # fmt: skip
    for backend in vllm_install.BACKENDS:
        found = vllm_install.find_vllm(backend)
        if found is None and backend != vllm_install.default_backend():
            continue  # the other build is only listed when installed
        rows.append({"engine": f"vllm ({backend})", "installed": found is not None,
                     "version": found.version if found else None, "where": str(found.venv) if found else None,
                     "source": found.source if found else None})  # fmt: skip
    return rows


_LLAMA_NAMES = ("llama.cpp", "llamacpp", "llama-cpp")


@engines_app.command("install")
def engines_install(
    engine: str = typer.Argument("llama.cpp", help="llama.cpp (built from source) or vllm (a cached venv)."),
    force: bool = typer.Option(False, "--force", help="Rebuild / reinstall even if a cached install exists."),
    backend: str = typer.Option("auto", "--backend", help="auto | cpu | cuda"),
) -> None:
    """Install an engine once per machine into ~/.cache/gpumix: llama.cpp (llama-server, llama-bench, ggml-rpc-server,
    built from the pinned sdist) or vLLM (its own venv: the CPU build here, the CUDA wheel where a driver is present)."""
    if engine not in (*_LLAMA_NAMES, "vllm"):
        raise GpumixError(f"unknown engine '{engine}'", hint="gpumix installs llama.cpp and vllm; TEI/whisper/image run from their own images")
    backend = choice(backend, ("auto", "cpu", "cuda"), "--backend")
    label = "vLLM" if engine == "vllm" else "llama.cpp"
    with Progress(TextColumn(f"[bold]{label}[/]"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(), TextColumn("{task.description}", markup=False), console=stdout_console(), transient=False) as bar:
        task = bar.add_task("starting", total=1.0)

        def report(message: str, fraction: float | None) -> None:
            if fraction is None:
                bar.update(task, description=message)
            else:
                bar.update(task, description=message, completed=fraction)

        if engine == "vllm":
            found = vllm_install.install_vllm(None if backend == "auto" else backend, progress=report, force=force)
            done = f"vLLM {found.version} ({found.backend}): {found.vllm_bin}"
        else:
            options = llamacpp.default_build_options() if backend == "auto" else llamacpp.BuildOptions(backend=backend)
            install = llamacpp.install_llama_cpp(options, progress=report, force=force)
            done = f"llama.cpp {install.version}: {install.bin_dir}"
    say(Text(done))


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
