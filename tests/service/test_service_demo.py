"""The demo page in a real headless Chromium (Debian's, driven by Playwright) against a real uvicorn server.

Skipped with the reason when Playwright or Chromium is missing (`pip install playwright`; `apt-get install
chromium`; never `playwright install`, which downloads a browser). ``SPQUANT_CHROMIUM`` names another binary.
"""

import importlib.util
import os
import shutil

import numpy as np
import pytest

from data.formats.dat import encode_dat_records, write_dat
from data.formats.evt2 import encode_evt2
from data.formats.recording import open_recording
from data.windows import iter_windows
from service.settings import Settings
from tests.helpers import random_events
from tests.service_support import TINY_HEIGHT, TINY_WIDTH, running_server, tiny_checkpoint

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


def _windows_of(path):
    recording = open_recording(path)
    return sum(1 for _ in iter_windows(recording, 50_000))


@pytest.mark.parametrize(("name", "encoding", "canvas"), [
    ("evt3_test_pedestrians.raw", "evt3", [640, 360]),  # 1280x720, drawn at half scale
    ("sparklers.raw", "evt2", [640, 480]),
])
def test_demo_page_plays_a_camera_raw_file(server, page, real_file, name, encoding, canvas):
    path = real_file(name)
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{server}/?speed=0.5")
    page.wait_for_function("document.body.dataset.state === 'playing'", timeout=60_000)
    page.uncheck("#loop")
    page.set_input_files("#file", str(path))
    page.wait_for_function("document.body.dataset.state === 'done'", timeout=120_000)
    assert name in page.inner_text("#status") or "finished" in page.inner_text("#status")
    assert page.evaluate("document.body.dataset.format") == encoding
    assert page.evaluate("[document.getElementById('view').width, document.getElementById('view').height]") == canvas
    assert page.evaluate("Number(document.body.dataset.windows)") == _windows_of(path)
    assert page.inner_text("#server") != "–"  # the server's per-window latency, from the window messages
    assert page.is_visible("#firing") and page.inner_text("#firing").endswith("%")  # the network's firing rate
    # the page's own RAW reader decodes what the server's does
    summary = page.evaluate("""async () => {
        const file = document.getElementById('file').files[0];
        const rec = window.spquantDemo.parseRecording(await file.arrayBuffer(), file.name, [1, 1]);
        const e = rec.events;
        let sx = 0, sy = 0, sp = 0;
        for (let i = 0; i < e.count; i++) { sx += e.x[i]; sy += e.y[i]; sp += e.p[i]; }
        return [rec.format, rec.width, rec.height, rec.sized, e.count, e.t[0], e.t[e.count - 1], sx, sy, sp,
                e.cut[e.count - 1] <= rec.payload.length];
    }""")
    recording = open_recording(path)
    ev = recording.read()
    assert summary == [encoding, recording.width, recording.height, "header", len(ev), int(ev["t"][0]),
                       int(ev["t"][-1]), int(ev["x"].sum(dtype=np.int64)), int(ev["y"].sum(dtype=np.int64)),
                       int(ev["p"].sum(dtype=np.int64)), True]
    assert errors == []


def test_demo_page_reader_defaults_to_the_models_sensor(server, page):
    page.goto(f"{server}/?speed=2")
    page.wait_for_function("document.body.dataset.state === 'playing'", timeout=60_000)
    ev = random_events(20, width=40, height=30, seed=1)
    bare = list(encode_dat_records(ev).tobytes())
    nogeometry = list(b"% evt 2.0\n% end\n" + encode_evt2(ev))
    sizes = page.evaluate("""([bare, raw]) => {
        const parse = (bytes, name) => window.spquantDemo.parseRecording(new Uint8Array(bytes).buffer, name, [96, 64]);
        const a = parse(bare, 'bare.dat'), b = parse(raw, 'x.raw');
        let refused = null;
        try { parse([1, 2, 3, 4], 'notes.txt'); } catch (error) { refused = error.message; }
        return [[a.format, a.width, a.height, a.sized, a.events.count], [b.format, b.width, b.height, b.sized,
                b.events.count], refused];
    }""", [bare, nogeometry])
    assert sizes[0] == ["dat", 96, 64, "model", 20] and sizes[1] == ["evt2", 96, 64, "model", 20]
    assert "not a Prophesee" in sizes[2]
    assert page.inner_text("#sensor") == f"{TINY_WIDTH}×{TINY_HEIGHT}"  # /v1/model's sensor, shown on the page


def test_api_docs_work_offline(server, page):
    outside = []

    def only_local(route):
        if route.request.url.startswith(server):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_local)
    try:
        page.goto(f"{server}/docs")
        page.locator(".opblock-summary-path", has_text="/v1/detect").first.wait_for(timeout=60_000)
        assert page.locator(".opblock-summary-path", has_text="/v1/stream").count() == 0  # WebSockets are not in it
        assert page.locator(".opblock-summary-path", has_text="/v1/model").count() == 1
        page.goto(f"{server}/redoc")
        page.locator("h2", has_text="Detect objects in a batch of events").first.wait_for(timeout=60_000)
    finally:
        page.unroute("**/*", only_local)
    assert outside == []


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory):
    checkpoint = tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt")
    with running_server(Settings(model=checkpoint, score_threshold=0.0, threads=1, api_key="s3cret")) as url:
        yield url


def test_demo_page_asks_for_the_api_key_and_uses_it(keyed_server, page):
    sockets, model_requests = [], []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    page.on("request", lambda r: "/v1/model" in r.url and model_requests.append(r.headers.get("x-api-key")))
    page.goto(f"{keyed_server}/?speed=2")
    page.wait_for_function("document.body.dataset.state === 'key'", timeout=60_000)
    assert page.is_visible("#apikey") and "needs an API key" in page.inner_text("#status")
    page.fill("#apikey", "wrong")
    page.click("#keyform button")
    page.wait_for_function("document.getElementById('status').textContent.includes('refused')", timeout=30_000)
    page.fill("#apikey", "s3cret")
    page.click("#keyform button")
    page.wait_for_function("Number(document.body.dataset.windows) >= 3", timeout=60_000)
    assert not page.is_visible("#keyform")
    assert model_requests == [None, "wrong", "s3cret"]  # REST calls carry the key as X-API-Key
    assert sockets and all(url.endswith("/v1/stream?api_key=s3cret") for url in sockets)
    page.evaluate("sessionStorage.clear()")
