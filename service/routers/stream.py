"""``WS /v1/stream``: a live event stream in, one detection message per window out, state kept per session.

The loop reads one message, runs the windows it completes through the detector (on a worker thread, one after
another, so the session's state is carried in order), sends their detections, then reads the next message. Nothing
is buffered beyond the message being processed: a client that sends faster than the detector runs is slowed down by
the socket (backpressure), and a client that does not read its replies stalls only its own session.
"""

from __future__ import annotations

import asyncio
import logging
import time

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from data.windows import Window
from service.dependencies import EngineDep, SessionsDep, SettingsDep, api_key_ok
from service.inference import DetectionEngine
from service.schemas import window_json
from service.sessions import CloseCode, ConfigMessage, StreamError, StreamSession, parse_control
from service.settings import Settings

router = APIRouter(tags=["stream"])
logger = logging.getLogger(__name__)

_MAX_REASON_BYTES = 123  # RFC 6455: a close frame's reason fits in 123 bytes


@router.websocket("/v1/stream")
async def stream(websocket: WebSocket, engine: EngineDep, settings: SettingsDep, sessions: SessionsDep) -> None:
    """Serve one stream session (see the module docstring and the README for the message formats)."""
    await websocket.accept()
    session: StreamSession | None = None
    outcome = "closed"
    try:
        if not api_key_ok(settings, websocket.headers.get("x-api-key") or websocket.query_params.get("api_key")):
            raise StreamError(CloseCode.POLICY_VIOLATION, "missing or wrong API key (X-API-Key header or ?api_key=)")
        session = sessions.open(engine, settings)
        while await _serve_message(websocket, session, engine, settings):
            pass
    except StreamError as exc:
        outcome = f"error_{int(exc.code)}"
        await _close(websocket, exc.code, exc.detail)
    except WebSocketDisconnect:
        outcome = "disconnected"
    except Exception:  # a bug must end this session only, with a clear code, never the server
        logger.exception("stream session failed")
        outcome = f"error_{int(CloseCode.INTERNAL_ERROR)}"
        await _close(websocket, CloseCode.INTERNAL_ERROR, "internal server error; the session was closed")
    finally:
        if session is not None:
            sessions.close(session, outcome)


async def _serve_message(websocket: WebSocket, session: StreamSession, engine: DetectionEngine,
                         settings: Settings) -> bool:
    """Handle one client message; False once the session is over."""
    try:
        async with asyncio.timeout(settings.idle_timeout_s):  # unlike wait_for, no task per message
            message = await websocket.receive()
    except TimeoutError:
        raise StreamError(CloseCode.IDLE_TIMEOUT, f"idle for {settings.idle_timeout_s:g} s; closing") from None
    received = time.perf_counter()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    data = message.get("bytes")
    if data is not None:
        if len(data) > settings.max_message_bytes:
            raise StreamError(CloseCode.MESSAGE_TOO_BIG,
                              f"message of {len(data)} bytes; the limit is {settings.max_message_bytes}")
        windows = session.feed(data)
        if windows:  # most messages complete none (a window spans several)
            await _send_windows(websocket, session, engine, windows, received)
        return True
    command = parse_control(message.get("text") or "")
    if isinstance(command, ConfigMessage):
        await websocket.send_json(session.configure(command))
    elif command.type == "reset":
        session.reset()
        await websocket.send_json({"type": "ack", "command": "reset"})
    else:  # flush or close: complete the window in progress first
        windows = session.flush()
        await _send_windows(websocket, session, engine, windows, received)
        await websocket.send_json({"type": "ack", "command": command.type, "windows": len(windows)})
        if command.type == "close":
            await _close(websocket, CloseCode.NORMAL, "closed by the client")
            return False
    return True


async def _send_windows(websocket: WebSocket, session: StreamSession, engine: DetectionEngine,
                        windows: list[Window], received: float) -> None:
    # One window after another: each step needs the state the previous one left.
    for window in windows:
        boxes, session.state, rate = await engine.step(session.detector, window.events, window.t_start,
                                                       session.state)
        latency = time.perf_counter() - received  # since the message that completed the window arrived
        await websocket.send_json({"type": "detections", **window_json(window.t_start, window.t_end, boxes,
                                                                        engine.class_names),
                                   "latency_ms": round(latency * 1000, 3), "firing_rate": round(rate, 6)})
        engine.metrics.window_latency_seconds.observe(latency)
    engine.metrics.windows.labels(source="stream").inc(len(windows))


async def _close(websocket: WebSocket, code: CloseCode, detail: str) -> None:
    """Send the error (unless it is a normal close) and close with ``code``, if the client is still there."""
    if websocket.application_state != WebSocketState.CONNECTED:
        return
    try:
        if code != CloseCode.NORMAL:
            await websocket.send_json({"type": "error", "code": int(code), "detail": detail})
        reason = detail.encode()[:_MAX_REASON_BYTES].decode(errors="ignore")
        await websocket.close(int(code), reason)
    except (WebSocketDisconnect, RuntimeError):
        pass  # the client left first
