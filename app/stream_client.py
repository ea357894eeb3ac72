"""A client of the detection service's ``WS /v1/stream``, for integrators and ``spquant stream``.

It speaks the protocol of ``service/routers/stream.py``: one ``{"type": "config", ...}`` text message (answered by
an ack), binary event payloads in any chunking, then ``{"type": "close"}``, which makes the server complete the window
in progress, answer ``{"type": "ack", "command": "close", "windows": n}`` and close with 1000. Every window comes
back as one ``{"type": "detections", "t_start", "t_end", "detections": [...]}`` message, in order, empty windows
included. A server error arrives as ``{"type": "error", "code", "detail"}`` followed by the close, and is raised here
as :class:`StreamClientError` (no reconnect: a session's membrane state lives on the server and dies with it).

Sending runs on a thread while the caller iterates over the windows: the server answers a window only after it has
read the message that completes it and blocks while its replies go unread, so sending and receiving must overlap.
``pace="max"`` sends as fast as the server reads (its one-message-at-a-time loop throttles the socket); ``"sensor"``
holds each payload until the wall clock, started at the first event, reaches the payload's last event time.

Example::

    from app.stream_client import StreamClient, dat_payloads
    from data.formats.recording import open_recording

    recording = open_recording("street_td.dat")
    with StreamClient("ws://127.0.0.1:8000/v1/stream", width=recording.width, height=recording.height) as client:
        for window in client.stream(dat_payloads(recording.iter_chunks()), pace="sensor"):
            print(window["t_end"], [(d["class_name"], round(d["score"], 2)) for d in window["detections"]])
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, Literal

import numpy as np

from data.formats.dat import encode_dat_records
from data.formats.labels import BBOX_DTYPE

Payload = tuple[bytes, int | None]  # event bytes, and the time (µs) of their last event when known (pacing)
ENCODINGS = ("dat", "evt2", "evt3")
PACES = ("sensor", "max")
CLOSE_MEANINGS = {
    1003: "the server did not understand a message",
    1007: "invalid events",
    1008: "refused by policy (API key?)",
    1009: "message too big",
    1011: "server fault",
    1013: "server busy, try again later",
    4408: "idle timeout",
}
_MAX_EVENTS_PER_MESSAGE = 32_768  # 256 kB of DAT records: far below the server's default 8 MiB message limit


class StreamClientError(Exception):
    """The stream could not start or was ended by the server; ``code`` is the WebSocket close code (None when no
    connection was made)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


def dat_payloads(chunks: Iterable[np.ndarray], slice_us: int = 10_000) -> Iterator[Payload]:
    """Event chunks (``data.events.EVENT_DTYPE``) as DAT-record payloads of at most ``slice_us`` of sensor time (and
    at most 32 768 events) each, with their last event time."""
    if slice_us < 1:
        raise ValueError(f"slice_us must be >= 1, got {slice_us}")
    for chunk in chunks:
        if not len(chunk):
            continue
        slot = chunk["t"] // slice_us
        cuts = np.flatnonzero(np.diff(slot)) + 1
        for part in np.split(chunk, cuts):
            for start in range(0, len(part), _MAX_EVENTS_PER_MESSAGE):
                piece = part[start:start + _MAX_EVENTS_PER_MESSAGE]
                yield encode_dat_records(piece).tobytes(), int(piece["t"][-1])


def windows_to_boxes(windows: Iterable[dict[str, Any]]) -> np.ndarray:
    """Detection messages as one array in the label dtype, as ``spquant predict`` writes it (``t`` = window end)."""
    rows = [(w["t_end"], d["x"], d["y"], d["w"], d["h"], d["class_id"], 0, d["score"])
            for w in windows for d in w["detections"]]
    boxes = np.zeros(len(rows), dtype=BBOX_DTYPE)
    for i, name in enumerate(BBOX_DTYPE.names):
        boxes[name] = [row[i] for row in rows]
    return boxes


class StreamClient:
    """One ``/v1/stream`` session: a context manager around a WebSocket, with :meth:`stream` iterating the windows.

    Args:
        url: ``ws://HOST:PORT`` (``/v1/stream`` is appended when the URL has no path) or the full endpoint URL.
        api_key: sent as ``X-API-Key`` when the server requires one.
        encoding: of the payloads: ``dat`` (8-byte DAT records), ``evt2`` or ``evt3`` (a camera's raw words).
        width, height: the sensor size (both or neither; neither = the sensor the server's model was trained for).
        score_threshold: the session's detection threshold (None = the server's default).
        open_timeout: seconds to connect and get the config acknowledged.
    """

    def __init__(self, url: str, *, api_key: str | None = None, encoding: str = "dat", width: int | None = None,
                 height: int | None = None, score_threshold: float | None = None,
                 open_timeout: float = 10.0) -> None:
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
        if (width is None) != (height is None):
            raise ValueError("give the sensor's width and height together, or neither")
        if not url.startswith(("ws://", "wss://")):
            raise ValueError(f"the URL must start with ws:// or wss://, got {url!r}")
        host_and_path = url.split("://", 1)[1]
        self.url = url if "/" in host_and_path.strip("/") else url.rstrip("/") + "/v1/stream"
        self.api_key, self.open_timeout = api_key, open_timeout
        self.config: dict[str, Any] = {"type": "config", "encoding": encoding}
        if width is not None:
            self.config.update(width=width, height=height)
        if score_threshold is not None:
            self.config["score_threshold"] = score_threshold
        self.ack: dict[str, Any] = {}
        self._ws: Any = None
        self._stack = contextlib.ExitStack()
        self._error: dict[str, Any] | None = None

    def __enter__(self) -> StreamClient:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> dict[str, Any]:
        """Connect, send the config and return its acknowledgement (``width``, ``height``, ``window_us``,
        ``classes``, ``score_threshold``)."""
        from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
        from websockets.sync.client import connect

        headers = {"X-API-Key": self.api_key} if self.api_key else None
        try:
            self._ws = self._stack.enter_context(connect(
                self.url, additional_headers=headers, open_timeout=self.open_timeout, max_size=None, proxy=None,
                compression=None))
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
            raise StreamClientError(f"cannot connect to {self.url}: {reason}") from None
        try:
            self._ws.send(json.dumps(self.config))
        except ConnectionClosed as exc:  # refused at once (API key, server full): the reply says why
            try:
                self._receive()
            except StreamClientError:
                raise
            raise self._closed_error(exc) from None
        self.ack = self._receive()
        if self.ack.get("type") != "ack" or self.ack.get("command") != "config":
            self.close()
            raise StreamClientError(f"unexpected answer to the config message: {self.ack}")
        return self.ack

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._ws is not None:
            self._ws = None
            self._stack.close()

    def stream(self, payloads: Iterable[Payload | bytes],
               pace: Literal["sensor", "max"] = "max") -> Iterator[dict[str, Any]]:
        """Send ``payloads`` (bytes, or ``(bytes, last event time µs)`` pairs for ``pace="sensor"``), then close the
        session; yields every window's detection message as it arrives, the last ones after the close.

        Raises:
            StreamClientError: the server closed the session with an error (``code`` says why).
            Exception: whatever reading ``payloads`` raised (the session is closed first).
        """
        if pace not in PACES:
            raise ValueError(f"pace must be one of {PACES}, got {pace!r}")
        if self._ws is None:
            raise RuntimeError("open the client first (use it as a context manager)")
        failure: list[BaseException] = []
        sender = threading.Thread(target=self._send_all, args=(self._ws, payloads, pace, failure), daemon=True,
                                  name="stream-client-send")
        sender.start()
        try:
            while True:
                message = self._receive(failure)
                kind = message.get("type")
                if kind == "detections":
                    yield message
                elif kind == "ack" and message.get("command") == "close":
                    return
        finally:
            sender.join(timeout=1.0)
            self.close()

    @staticmethod
    def _send_all(ws: Any, payloads: Iterable[Payload | bytes], pace: str, failure: list[BaseException]) -> None:
        from websockets.exceptions import ConnectionClosed

        start_wall = first_t = None
        try:
            for item in payloads:
                data, t_last = (item, None) if isinstance(item, bytes | bytearray | memoryview) else item
                if pace == "sensor" and t_last is not None:
                    if first_t is None:
                        start_wall, first_t = time.monotonic(), t_last
                    delay = start_wall + (t_last - first_t) / 1e6 - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                ws.send(bytes(data))
            ws.send(json.dumps({"type": "close"}))
        except ConnectionClosed:
            pass  # the server ended the session: the receiver reports why
        except BaseException as exc:  # a bad source: stop the session and let the caller see the cause
            failure.append(exc)
            ws.close()

    def _receive(self, failure: list[BaseException] | None = None) -> dict[str, Any]:
        from websockets.exceptions import ConnectionClosed

        while True:
            try:
                text = self._ws.recv()
            except ConnectionClosed as exc:
                if failure:
                    raise failure[0] from None
                raise self._closed_error(exc) from None
            if isinstance(text, bytes):
                continue  # the protocol has no binary replies; ignore rather than fail
            message = json.loads(text)
            if message.get("type") == "error":
                self._error = message  # the close that follows says how the session ended
                continue
            return message

    def _closed_error(self, exc: Any) -> StreamClientError:
        close = exc.rcvd
        code = close.code if close is not None else 1006
        detail = (self._error or {}).get("detail") or (close.reason if close is not None else "") or \
            "connection lost"
        meaning = CLOSE_MEANINGS.get(code, "connection closed")
        if code == 1000:
            return StreamClientError(f"the server closed the session before acknowledging the close ({detail})", code)
        return StreamClientError(f"server closed the stream with code {code} ({meaning}): {detail}", code)
