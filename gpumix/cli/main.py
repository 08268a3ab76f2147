"""The `gpumix` command: a thin typer app. Each pipeline stage registers its commands from its own module."""

from __future__ import annotations

import importlib
import sys

import typer

from gpumix.cli.output import print_error, print_gpumix_error
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
    "gpumix.cli.cluster_cmds",
    "gpumix.cli.tune_cmds",
)


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


def _print_typer_error(exc: typer.TyperException) -> None:
    """typer's own errors (missing argument, bad option value, unknown command) in the same plain form as a
    GpumixError: for a usage error the usage line and where to get help, then one `error:` line."""
    ctx = getattr(exc, "ctx", None)  # set on usage errors (typer's vendored click UsageError)
    if ctx is not None:
        sys.stderr.write(ctx.get_usage() + "\n")
        if ctx.command.get_help_option(ctx) is not None:
            sys.stderr.write(f"Try '{ctx.command_path} {ctx.help_option_names[0]}' for help.\n")
    print_error(exc.format_message())


def main() -> None:
    """Run the CLI. Every error a user can cause ends here as plain text on stderr (see gpumix.cli.output)."""
    try:
        # standalone_mode=False: typer raises its usage errors instead of drawing them in a wrapped rich panel
        code = app(standalone_mode=False)
    except GpumixError as exc:
        print_gpumix_error(exc)
        sys.exit(2)
    except typer.TyperException as exc:
        if type(exc).__name__ != "NoArgsIsHelpError":  # that one has printed the help already
            _print_typer_error(exc)
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):  # Abort: end of input at a prompt
        print_error("interrupted")
        sys.exit(130)
    # typer returns the code of a `typer.Exit` (130 after Ctrl-C) instead of exiting; a command returns None
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
