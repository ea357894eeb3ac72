"""The demo page in a real headless Chromium (Debian's, driven by Playwright) against a real uvicorn server.

Skipped with the reason when Playwright or Chromium is missing (`pip install playwright`; `apt-get install
chromium`; never `playwright install`, which downloads a browser). ``SPQUANT_CHROMIUM`` names another binary.
"""

import importlib.util
import os
import shutil

import pytest

from data.formats.dat import write_dat
from service.settings import Settings
from tests.helpers import random_events
from tests.service_support import running_server, tiny_checkpoint

CHROMIUM = os.environ.get("SPQUANT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
# Marks rather than a module-level skip: `pytest --co -m browser` still lists the tests where the browser is missing.
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None,
                       reason="playwright is not installed (pip install playwright)"),
    pytest.mark.skipif(CHROMIUM is None,
                       reason="no Chromium found (apt-get install chromium, or set SPQUANT_CHROMIUM)"),
]

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    checkpoint = tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt")
    with running_server(Settings(model=checkpoint, score_threshold=0.0, threads=1)) as url:
        yield url


@pytest.fixture(scope="module")
def page():
    from playwright import sync_api

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield browser.new_page(viewport={"width": 1000, "height": 900})
        browser.close()


def _box_pixels(page):
    # Pixels in the box colours (orange car / green pedestrian) on the canvas: boxes were really drawn.
    return page.evaluate("""() => {
        const c = document.getElementById('view');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 0; i < d.length; i += 4) {
            if ((d[i] === 255 && d[i + 1] === 159 && d[i + 2] === 64) || (d[i] === 61 && d[i + 1] === 220)) n++;
        }
        return n;
    }""")


def test_demo_page_plays_the_sample_and_draws_boxes(server, page, tmp_path):
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{server}/?speed=2")
    page.wait_for_function("Number(document.body.dataset.windows) >= 10 && Number(document.body.dataset.boxes) > 0",
                           timeout=60_000)
    assert page.evaluate("document.body.dataset.state") == "playing"
    assert _box_pixels(page) > 0
    assert page.inner_text("#latency") != "–" and int(page.inner_text("#fps")) > 0
    page.screenshot(path=tmp_path / "demo.png")
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    page.wait_for_function("Number(document.body.dataset.plays) >= 1", timeout=60_000)  # whole sample, then loop
    assert errors == []


def test_demo_page_plays_an_opened_file(server, page, tmp_path):
    ev = random_events(4000, t_max=500_000, width=640, height=480, seed=3)
    write_dat(tmp_path / "mine_td.dat", ev, width=640, height=480)
    page.goto(f"{server}/?speed=2")
    page.wait_for_function("document.body.dataset.state === 'playing'", timeout=60_000)
    page.uncheck("#loop")
    page.set_input_files("#file", str(tmp_path / "mine_td.dat"))
    page.wait_for_function("document.body.dataset.state === 'done'", timeout=60_000)
    assert "mine_td.dat" in page.inner_text("#status")
    assert page.evaluate("[document.getElementById('view').width, document.getElementById('view').height]") == [
        640, 480]
    assert page.evaluate("Number(document.body.dataset.windows)") == 10  # windows 0..450 ms, all of them
