"""The report with its visual and robustness sections, end to end, and `report.html` in a real headless browser.

The browser is the Debian `chromium` package driven by Playwright (`executable_path=/usr/bin/chromium`);
`.ci/run` installs it, elsewhere the browser test is skipped when it is missing.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import jsonschema
import pytest
import torch

from evaluation.cli import main
from evaluation.report.build import SCHEMA_PATH
from tests.fixtures.visual import make_visual_setup

CHROMIUM = Path("/usr/bin/chromium")
IMAGES = ("attention_maps.png", "pca_features.png", "retrieval.png", "embedding_2d.png", "robustness.png")


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    root = make_visual_setup(tmp_path_factory.mktemp("report"))
    out = root / "report"
    before = torch.get_num_threads()
    try:
        code = main(["report", "--weights", str(root / "export"), "--train", str(root / "train"), "--val",
                     str(root / "val"), "--out", str(out), "--label-fractions", "1.0", "--seeds", "1",
                     "--batch-size", "8", "--threads", "1", "--device", "cpu", "--projection", "pca",
                     "--robustness", "--corruptions", "gaussian_noise,pixelate", "--severities", "2"])
    finally:
        torch.set_num_threads(before)
    assert code == 0
    return out


def test_report_has_the_sections_and_relative_images(report_dir):
    report = json.loads((report_dir / "report.json").read_text())
    jsonschema.validate(report, json.loads(SCHEMA_PATH.read_text()))
    assert set(report["visual"]["files"]) == {"attention", "pca", "retrieval", "projection"}
    assert {r["corruption"] for r in report["robustness"]["rows"]} == {"clean", "gaussian_noise", "pixelate"}
    md = (report_dir / "report.md").read_text()
    for name in IMAGES:
        assert f"]({name})" in md, name  # relative links: the folder can be zipped and moved
        assert (report_dir / name).is_file()
    assert "## Robustness to common corruptions" in md and "## What the features see" in md
    page = (report_dir / "report.html").read_text()
    assert not re.search(r'src="(?!data:)', page)  # every image is embedded


def test_visual_off_and_robustness_off_drop_their_sections(report_dir, tmp_path):
    out = tmp_path / "again"
    shutil.copytree(report_dir, out)
    root = report_dir.parent
    assert main(["report", "--weights", str(root / "export"), "--train", str(root / "train"), "--val",
                 str(root / "val"), "--out", str(out), "--label-fractions", "1.0", "--seeds", "1", "--batch-size",
                 "8", "--device", "cpu", "--no-visual"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["visual"] is None and report["robustness"] is None
    assert "retrieval.png" not in (out / "report.md").read_text()


def test_report_html_in_headless_chromium(report_dir):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install the Debian chromium package (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install "
                                   "'selfsup[browser]')")
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 800, "height": 900})  # narrower than the long lines
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto((report_dir / "report.html").resolve().as_uri())
            page.wait_for_load_state("load")
            images = page.eval_on_selector_all("img", "els => els.map(e => [e.alt, e.complete, e.naturalWidth])")
            tables = page.eval_on_selector_all("table", "els => els.map(e => e.rows.length)")
            headings = page.eval_on_selector_all("h2", "els => els.map(e => e.textContent)")
            text = page.evaluate("document.body.innerText")
            bold = page.eval_on_selector_all("strong", "els => els.map(e => e.textContent)")
            code = page.eval_on_selector_all("code", "els => els.length")
            overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        finally:
            browser.close()
    assert errors == []
    alts = [alt for alt, _, _ in images]
    assert set(IMAGES) <= set(alts), alts
    assert all(complete and width > 0 for _, complete, width in images), images
    assert len(tables) >= 3 and all(n >= 2 for n in tables)  # results, robustness and retrieval tables with rows
    assert "Robustness to common corruptions" in headings
    # Markdown is rendered, not shown: no ** or backticks in the visible text, bold and code are elements.
    assert "**" not in text and "`" not in text
    assert "pretrained" in bold and code > 0
    # Long lines (paths, the command) wrap: the page does not scroll sideways at 800 px.
    assert overflow <= 0, overflow


def test_report_html_renders_markdown_and_escapes_raw_html(tmp_path):
    from evaluation.report.render import html_page

    page = html_page("# T\n\n- weights: `a<b>` as **pretrained**\n\n<script>alert(1)</script>\n", tmp_path, [])
    assert "<strong>pretrained</strong>" in page and "<code>a&lt;b&gt;</code>" in page
    assert "<script>" not in page and "&lt;script&gt;" in page
