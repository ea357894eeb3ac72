"""``spquant serve``: argument and environment handling, and a real server process answering /healthz."""

import json
import urllib.request

import pytest
import uvicorn

from app.cli import main
from tests.service_support import serve_process, tiny_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt")


def test_serve_passes_model_host_port_and_environment_to_uvicorn(checkpoint, monkeypatch):
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append((app, kwargs)))
    monkeypatch.setenv("SPQUANT_HOST", "0.0.0.0")
    monkeypatch.setenv("SPQUANT_MAX_SESSIONS", "7")
    assert main(["serve", "--model", str(checkpoint), "--port", "9123"]) == 0
    (app, kwargs), = calls
    assert (kwargs["host"], kwargs["port"]) == ("0.0.0.0", 9123)
    settings = app.state.settings
    assert settings.model == checkpoint and settings.max_sessions == 7


def test_serve_reports_a_missing_model_cleanly(tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path / "missing.pt")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err


def test_serve_runs_a_real_server(checkpoint, tmp_path):
    with serve_process(checkpoint, timeout_s=60) as port:
        response = urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/model", timeout=10)
        assert json.load(response)["variant"] == "spquant"
