"""The `gpumix` command: a thin typer app. Each pipeline stage registers its commands from its own module."""

from __future__ import annotations

import importlib
import sys

import typer
from rich.console import Console

from gpumix.errors import GpumixError

app = typer.Typer(
    name="gpumix",
    help="Plan, launch and serve AI workloads on mismatched GPUs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each module defines `register(app)`; listed in pipeline order (hardware → ... → tune).
COMMAND_MODULES = (
    "gpumix.cli.hardware_cmds",
    "gpumix.cli.models_cmds",
    "gpumix.cli.estimate_cmds",
    "gpumix.cli.plan_cmds",
    "gpumix.cli.report_cmds",
    "gpumix.cli.launch_cmds",
    "gpumix.cli.run_cmds",
    "gpumix.cli.gateway_cmds",
    "gpumix.cli.tune_cmds",
)

err_console = Console(stderr=True)


def _register_all() -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # stage not built yet
                continue
            raise
        module.register(app)


_register_all()


def main() -> None:
    try:
        app()
    except GpumixError as exc:
        err_console.print(f"[bold red]error:[/] {exc.message}", highlight=False)
        if exc.hint:
            err_console.print(f"  [yellow]hint:[/] {exc.hint}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
