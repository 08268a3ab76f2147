"""Helpers for the browser tests."""

from __future__ import annotations


def save_screenshot(page, path, width: int = 1200) -> None:  # noqa: ANN001 - playwright Page
    """A full-page screenshot for the docs, quantised to 64 colours so the PNG stays small."""
    import io

    from PIL import Image

    page.set_viewport_size({"width": width, "height": 900})
    image = Image.open(io.BytesIO(page.screenshot(full_page=True)))
    image.convert("RGB").quantize(colors=64, dither=Image.Dither.NONE).save(path, optimize=True)
