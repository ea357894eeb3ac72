"""Helpers for the service tests: a tiny detector checkpoint and a real uvicorn server on a free local port."""

from __future__ import annotations

import socket
import threading
import time
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
