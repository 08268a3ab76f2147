"""How the CLI writes to the terminal.

Errors go to stderr as plain text: ``error: <message>`` on one line, then an optional ``  hint: <hint>``; no markup
is interpreted and nothing is wrapped, whatever the terminal width, so a path or a regex in a message survives
intact and scripts can grep it. Colour only when stderr is a terminal (and ``NO_COLOR`` is unset).

Tables and status lines go to stdout through rich. rich reads ``[...]`` as markup, so every piece of user text
(names, paths, model ids, reasons) passes through :func:`esc` in a markup line, or is added to a table with
:func:`add_row`, which takes strings literally.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

from rich.console import Console, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from gpumix.errors import GpumixError

_RED_BOLD = "\x1b[1;31m"
_YELLOW = "\x1b[33m"
_RESET = "\x1b[0m"
HINT_INDENT = "        "  # continuation lines of a multi-line hint (a log tail, a YAML example) line up under it


def one_line(text: str) -> str:
    """Join the lines of ``text`` with spaces, so a message is exactly one terminal line."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _use_colour(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and "NO_COLOR" not in os.environ


def error_text(message: str, hint: str | None = None, colour: bool = False) -> str:
    """The text printed for an error: ``error: <message>`` and, when given, ``  hint: <hint>``; ends in a newline.

    The message is forced onto one line. A hint may span lines on purpose (a log tail, an example); its
    continuation lines are indented under it."""
    label, hint_label = ("error:", "hint:") if not colour else (f"{_RED_BOLD}error:{_RESET}", f"{_YELLOW}hint:{_RESET}")
    lines = [f"{label} {one_line(message)}"]
    if hint:
        first, *rest = [line.rstrip() for line in hint.strip("\n").splitlines()] or [""]
        lines.append(f"  {hint_label} {first.strip()}")
        lines += [f"{HINT_INDENT}{line}" for line in rest]
    return "\n".join(lines) + "\n"


def print_error(message: str, hint: str | None = None, stream: TextIO | None = None) -> None:
    """Write an error to stderr (or ``stream``) as plain text."""
    out = stream if stream is not None else sys.stderr
    out.write(error_text(message, hint, colour=_use_colour(out)))
    out.flush()


def print_gpumix_error(exc: GpumixError, stream: TextIO | None = None) -> None:
    print_error(exc.message, exc.hint, stream)


def esc(value: object) -> str:
    """User text made safe to embed in a rich markup string (brackets printed as written)."""
    return escape(str(value))


def stdout_console() -> Console:
    """A console for stdout, made per call so it reads the terminal width (COLUMNS) at that moment."""
    return Console(highlight=False)


def say(line: str | Text) -> None:
    """One line on stdout, never wrapped; markup in a str is ours, so user text inside must be :func:`esc`-aped."""
    stdout_console().print(line, soft_wrap=True)


def show(renderable: RenderableType) -> None:
    """A table (or other rich renderable) on stdout, fitted to the terminal width."""
    stdout_console().print(renderable)


def styled(text: object, style: str) -> Text:
    """A table cell or line fragment with a style, its text taken literally."""
    return Text(str(text), style=style)


def add_row(table: Table, *cells: str | Text) -> None:
    """Add a table row whose string cells are literal text (no markup); pass :func:`styled` cells for colour."""
    table.add_row(*(cell if isinstance(cell, Text) else Text(cell) for cell in cells))
