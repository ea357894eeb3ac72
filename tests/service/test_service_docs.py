"""/docs and /redoc work offline: every asset they load is served by the app itself (the browser check is in
test_service_demo.py)."""

import re

import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from service.settings import Settings
from tests.service_support import tiny_checkpoint


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    checkpoint = tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt")
    with TestClient(create_app(Settings(model=checkpoint, threads=1, api_key="k"))) as c:
        yield c


def _urls(html):
    return re.findall(r"""(?:src|href)=["']([^"']+)["']|url:\s*['"]([^'"]+)['"]""", html)


@pytest.mark.parametrize(("page", "assets"), [
    ("/docs", {"swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"}),
    ("/redoc", {"redoc.standalone.js", "favicon.png"}),
])
def test_docs_pages_load_only_local_assets(client, page, assets):
    response = client.get(page)  # no API key needed: the docs describe the API, they do not use it
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    assert "cdn." not in html and "fonts.googleapis" not in html and "https://" not in html
    linked = {url.rsplit("/", 1)[-1] for pair in _urls(html) for url in pair if url.startswith("/docs-assets/")}
    assert linked == assets
    for name in assets:
        asset = client.get(f"/docs-assets/{name}")
        assert asset.status_code == 200 and len(asset.content) > 1000, name
    assert "/openapi.json" in html
    # images only from here: ReDoc's footer logo would otherwise be fetched from its maker's CDN
    assert response.headers["content-security-policy"] == "img-src 'self' data: blob:"


def test_docs_assets_are_a_fixed_list(client):
    assert client.get("/docs-assets/swagger-ui-bundle.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/docs-assets/swagger-ui.css").headers["content-type"].startswith("text/css")
    for name in ("core.py", "__init__.py", "nope.js"):  # files of the package that are not docs assets, or none
        missing = client.get(f"/docs-assets/{name}")
        assert missing.status_code == 404 and "no docs asset" in missing.json()["detail"]
    for path in ("/docs-assets/", "/docs-assets/..%2F__init__.py", "/docs-assets/../core.py"):
        assert client.get(path).status_code == 404
    assert "/docs-assets/{name}" not in client.get("/openapi.json").json()["paths"]
