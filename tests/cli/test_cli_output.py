"""Errors reach the user as plain text (one `error:` line, an optional `hint:` line) and user text in tables and
messages is printed as written: no rich markup interpretation, no wrapping, whatever the terminal width."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

from gpumix.cli.output import error_text, print_error

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
NAME_PATTERN = "^[a-z0-9][a-z0-9_.-]{0,62}$"


def _gpumix(*args: str, columns: int = 40) -> subprocess.CompletedProcess[str]:
    """The real CLI as a user's script runs it: stdout and stderr are pipes, the terminal narrow."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(ROOT / ".pytest_cache"), "COLUMNS": str(columns)}
    return subprocess.run([sys.executable, "-m", "gpumix", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=120)  # fmt: skip


def _long_bracketed_dir(base: Path, length: int = 300) -> Path:
    """A directory whose absolute path is `length` characters and holds rich markup and a regex in brackets."""
    head = base / "[bold red]x[/]" / "[^a-z]{0,62}$"
    filler = length - len(str(head)) - 1
    assert filler > 10, "tmp path too long for the test"
    return head / ("p" * filler)


def test_error_with_brackets_and_a_300_character_path_is_one_intact_line(tmp_path):
    missing = _long_bracketed_dir(tmp_path) / "plan.yaml"
    assert len(str(missing)) > 300
    result = _gpumix("plan", str(missing))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines[0] == f"error: plan file {missing} does not exist", result.stderr
    assert lines[1].startswith("  hint: ") and len(lines) == 2
    assert "\x1b[" not in result.stderr  # no colour on a pipe
    assert result.stdout == ""


def test_name_pattern_error_keeps_the_regex(tmp_path):
    plan = tmp_path / "bad-name.yaml"
    plan.write_text("devices:\n  - gpu: RTX 4090\nservices:\n  - name: Bad Name\n    model: llama-3.1-8b\n"
                    "    quant: q4_k_m\n")  # fmt: skip
    result = _gpumix("plan", str(plan))
    assert result.returncode == 2
    first, hint = result.stderr.splitlines()
    assert first.startswith("error: ") and f"'{NAME_PATTERN}'" in first and "(got 'Bad Name')" in first
    assert hint == "  hint: see docs/plan-file.md for the plan-file keys"


def test_typer_usage_errors_are_plain_lines_on_stderr():
    missing = _gpumix("plan")
    assert missing.returncode == 2 and missing.stdout == ""
    lines = missing.stderr.splitlines()
    assert lines[0].startswith("Usage: ") and "gpumix plan [OPTIONS]" in lines[0]  # `python -m gpumix` here
    assert lines[1].startswith("Try '") and lines[1].endswith("gpumix plan --help' for help.")
    assert lines[-1] == "error: Missing argument 'file'." and len(lines) == 3
    unknown = _gpumix("no[red]such")
    assert unknown.returncode == 2
    assert unknown.stderr.splitlines()[-1] == "error: No such command 'no[red]such'."
    assert "╭" not in missing.stderr + unknown.stderr  # not drawn in a (wrapping) rich panel


def test_user_text_in_tables_and_messages_is_printed_as_written(tmp_path):
    folder = tmp_path / "[bold]plans[/bold]"
    folder.mkdir(parents=True)
    plan_file = folder / "hybrid.yaml"
    shutil.copy(EXAMPLES / "hybrid-box.yaml", plan_file)
    out = folder / "[red]plan.json"
    result = _gpumix("plan", str(plan_file), "-o", str(out), columns=400)
    assert result.returncode == 0, result.stderr
    assert f"plan {plan_file}: feasible" in result.stdout
    assert f"wrote {out}" in result.stdout.splitlines()
    assert out.is_file()


def test_error_text_forces_one_message_line_and_indents_a_multi_line_hint():
    text = error_text("cannot start the plan:\n  - port 8001 is busy\n  - [x] missing", "last lines:\nA [b]\nB")
    assert text.splitlines() == [
        "error: cannot start the plan: - port 8001 is busy - [x] missing",
        "  hint: last lines:",
        "        A [b]",
        "        B",
    ]
    assert error_text("plain") == "error: plain\n"


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_only_on_a_terminal(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    pipe, tty = io.StringIO(), _Tty()
    print_error("bad [x]", "do y", stream=pipe)
    print_error("bad [x]", "do y", stream=tty)
    assert pipe.getvalue() == "error: bad [x]\n  hint: do y\n"
    assert "\x1b[" in tty.getvalue() and "bad [x]" in tty.getvalue()
    monkeypatch.setenv("NO_COLOR", "1")
    no_colour = _Tty()
    print_error("bad [x]", stream=no_colour)
    assert no_colour.getvalue() == "error: bad [x]\n"
