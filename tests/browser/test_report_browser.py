"""The HTML report of every example, opened offline in chromium: all eight views render with the plan's numbers
of cards and services, the inline script runs under the CSP, nothing non-local is fetched, no console error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from browserhelpers import save_screenshot

from gpumix.hardware.discovery import LOCAL_MACHINE
from gpumix.report import plan_fields as pf
from gpumix.report.build import ReportOptions, build_report
from gpumix.report.html import VIEWS, write_report

pytestmark = pytest.mark.browser
EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict]]:
    out = tmp_path_factory.mktemp("reports")
    built = {}
    for example in EXAMPLES:
        data = build_report(_relative(example), ReportOptions(discover=LOCAL_MACHINE))  # as `gpumix report` plans
        built[example.stem] = (write_report(data, out / f"{example.stem}.html"), data)
    return built


def _relative(path: Path) -> Path:
    """As a user types it (the report's heading shows it), when the tests run from the repository."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def test_every_example_has_a_report_case() -> None:
    assert len(EXAMPLES) >= 10


@pytest.mark.parametrize("name", [e.stem for e in EXAMPLES])
def test_report_renders_every_view(name: str, reports, guarded_page) -> None:
    path, data = reports[name]
    doc = data["plan"]
    page = guarded_page.page
    page.goto(path.as_uri())
    page.wait_for_selector("body[data-ready='true']", timeout=10_000)  # the inline script ran: its CSP hash matches

    views = page.eval_on_selector_all("section.view", "els => els.map(e => e.dataset.view)")
    assert views == [key for key, _ in VIEWS]
    for key, _ in VIEWS:
        assert page.is_visible(f"#view-{key} h2")

    n_cards, n_services = len(pf.devices(doc)), len(pf.services(doc))
    assert page.get_attribute("body", "data-cards") == str(n_cards)
    assert page.get_attribute("body", "data-services") == str(n_services)
    # 2. one stacked bar per card, over-commit flagged exactly where planned memory exceeds free − margin
    assert page.locator("svg.memory-bars g.card").count() == n_cards
    for dev in pf.devices(doc):
        mem = pf.device_memory(dev)
        booked = sum(sum(p.values()) for s in pf.services(doc) for d, p in pf.service_memory(doc, s) if d == pf.device_id(dev))
        over = booked > mem["free"] - pf.device_margin_bytes(dev)
        card = page.locator(f"svg.memory-bars g.card[data-device='{pf.device_id(dev)}']")
        assert card.get_attribute("data-overcommit") == str(over).lower()
        assert card.locator("rect.margin").count() == 1
    placed = [s for s in pf.services(doc) if pf.service_device_ids(doc, s)]
    assert page.locator("svg.memory-bars rect.seg[data-part='weights']").count() == sum(
        len(pf.service_memory(doc, s)) for s in placed if any(p["weights"] for _, p in pf.service_memory(doc, s)))
    # 3. services x cards: a row per service, a column per card, a filled cell per (service, device)
    assert page.locator("table.placement tbody tr").count() == n_services
    assert page.locator("table.placement thead th.card-col").count() == n_cards
    assert page.locator("table.placement td.on").count() == sum(len(set(pf.service_device_ids(doc, s))) for s in placed)
    # 4. a layer strip per split service, its layers summing to the model's, the output layer on the last device
    split = [s for s in pf.services(doc) if len(pf.service_layers(s)) >= 2]
    assert page.locator("svg.layer-strip").count() == len(split)
    for svc in split:
        strip = page.locator(f"svg.layer-strip[data-service='{svc['name']}']")
        counts = strip.locator("g.layers").evaluate_all("els => els.map(e => Number(e.dataset.count))")
        assert counts == pf.service_layers(svc)
        assert strip.locator("g.output-layer").get_attribute("data-device") == pf.service_device_ids(doc, svc)[-1]
    # 5. predicted performance: a row per service, an SLO bar per check
    assert page.locator("table.performance tbody tr").count() == n_services
    assert page.locator("table.performance svg.slo-bar").count() == sum(len(pf.slo_checks(s)) for s in pf.services(doc))
    # 6. the split curve of each layer-split service, the three splits marked
    assert page.locator("svg.split-curve").count() == len(data["curves"])
    for curve in data["curves"]:
        assert page.locator(f"svg.split-curve[data-service='{curve['service']}'] .mark").count() == 3
    # 7. compare: every option in the table, the priced ones on the plot
    rows = data["compare"]["rows"]
    assert page.locator("table.compare tbody tr").count() == len(rows) == 7
    assert page.locator("svg.compare-scatter .option").count() == sum(1 for r in rows if r["gbp_per_month"])
    # 8. warnings with codes, each with what to do
    assert page.locator("table.warnings tbody tr").count() == len(pf.warnings(doc))
    assert page.locator("ol.suggestions li.suggestion").count() == len(pf.suggestions(doc))
    # tooltips: every memory segment and every layer group carries a <title>
    assert page.locator("svg.memory-bars rect.seg:not(:has(title))").count() == 0
    assert page.locator("svg.layer-strip g.layers:not(:has(title))").count() == 0
    # hovering a service in the legend dims every other service's segments (the inline script runs under the CSP)
    first = placed[0]["name"] if placed else None
    if first is not None:
        others = page.locator(f"svg.memory-bars rect.seg:not([data-service='{first}'])").count()
        page.hover(f".legend .key[data-service='{first}']")
        assert page.locator("svg.memory-bars rect.seg.dim").count() == others
        page.mouse.move(1, 1)
        assert page.locator("svg.memory-bars rect.seg.dim").count() == 0
    _screenshot(page, name)
    guarded_page.assert_clean()


def _screenshot(page, name: str) -> None:  # noqa: ANN001
    """GPUMIX_SCREENSHOTS_DIR=docs/img keeps the hybrid box's report as the README's picture."""
    target = os.environ.get("GPUMIX_SCREENSHOTS_DIR")
    if target and name == "hybrid-box":
        save_screenshot(page, Path(target) / "report-hybrid-box.png", width=1100)


def test_report_cli_with_png_opens_offline(tmp_path: Path, guarded_page) -> None:
    """`gpumix report` end to end on the asymmetric pair: the HTML and the two PNGs, the split curve drawn."""
    out = tmp_path / "report.html"
    run = subprocess.run([sys.executable, "-m", "gpumix", "report", "examples/4090-3090-70b.yaml", "-o", str(out),
                          "--png", str(tmp_path / "png")], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[2])  # fmt: skip
    assert run.returncode == 0, run.stderr
    pngs = sorted(p.name for p in (tmp_path / "png").iterdir())
    assert pngs == ["memory.png", "split-chat.png"]
    for name in pngs:
        assert (tmp_path / "png" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = guarded_page.page
    page.goto(out.as_uri())
    page.wait_for_selector("body[data-ready='true']")
    assert page.locator("svg.split-curve path.curve[data-fits='true']").count() == 1
    assert page.locator("svg.split-curve path.curve[data-fits='false']").count() == 1  # most splits do not fit 2x24 GB
    guarded_page.assert_clean()
