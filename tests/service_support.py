"""Helpers for the service tests: a tiny detector checkpoint and a real uvicorn server on a free local port."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import uvicorn

from models.networks.checkpoint import save_checkpoint
from models.networks.detector import DetectorConfig, build_detector
from service.main import create_app
from service.settings import Settings
from tests.helpers import calibrated

TINY_WIDTH, TINY_HEIGHT = 96, 64


def tiny_checkpoint(path: Path) -> Path:
    """A small detector whose BN statistics come from a few windows, so that it fires and finds boxes."""
    model = build_detector(DetectorConfig(bins=2, input_width=TINY_WIDTH, input_height=TINY_HEIGHT))
    generator = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # several intra-op threads are much slower on a busy 2-core machine
    try:
        calibrated(model, (torch.randint(0, 3, (2, 2, 2, TINY_HEIGHT, TINY_WIDTH), generator=generator,
                                         dtype=torch.uint8) for _ in range(3)))
    finally:
        torch.set_num_threads(threads)
    return save_checkpoint(path, model.eval())


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(settings: Settings, timeout_s: float = 30.0) -> Iterator[str]:
    """Serve ``create_app(settings)`` with uvicorn on a thread; yields the base URL and stops the server after."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout_s)


@contextmanager
def serve_process(checkpoint: Path, timeout_s: float = 90.0, command: list[str] | None = None,
                  unset: tuple[str, ...] = (), **env: str) -> Iterator[int]:
    """A real ``spquant serve`` subprocess serving ``checkpoint`` on a free port (``env``: more ``SPQUANT_*``
    settings, ``unset``: variables removed; ``command``: another way to start it); yields the port once ``/healthz``
    answers ok, terminates it on exit."""
    port = free_port()
    environ = {**os.environ, "SPQUANT_MODEL": str(checkpoint), "SPQUANT_PORT": str(port), **env}
    for name in unset:
        environ.pop(name, None)
    process = subprocess.Popen(command or [sys.executable, "-m", "app.cli", "serve"], env=environ,
                               cwd=Path(__file__).resolve().parents[1], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                    assert json.load(response)["status"] == "ok"
                    break
            except OSError:
                assert process.poll() is None, process.stderr.read().decode()
                assert time.monotonic() < deadline, f"server did not come up in {timeout_s:.0f} s"
                time.sleep(0.2)
        yield port
    finally:
        process.terminate()
        process.wait(30)
