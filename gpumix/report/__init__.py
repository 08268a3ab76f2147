"""The visual plan report: `gpumix report PLAN -o report.html [--png DIR]` and `gpumix plan FILE --html`.

build.py gathers the data (plan, split curves, compare), html.py and svg.py draw one self-contained HTML file,
png.py draws PNGs; plan_fields.py is the only module that knows the Plan JSON's field names.
"""

from __future__ import annotations

from pathlib import Path

from gpumix.errors import GpumixError


def write_report(data: dict, output: Path) -> Path:
    from gpumix.report.html import render_html

    html = render_html(data)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(html, encoding="utf-8")
    except OSError as exc:
        raise GpumixError(f"cannot write {output}: {exc.strerror}", hint="pass a writable -o FILE") from None
    return output
