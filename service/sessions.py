"""Stream sessions: one decoder, window cutter and detector state per WebSocket, bounded in number.

A session is plain synchronous state; the router does the socket I/O and runs the windows a session completes
through the engine one after another, so a session's state is only ever touched by its own, ordered steps.
"""

from __future__ import annotations

import json
from enum import IntEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from data.denoise import BackgroundActivityFilter
from data.errors import EventDataError
from data.events import validate_events
from data.windows import Window, WindowCutter
from models.inference.stream import StreamingDetector
from service.codecs import stream_decoder
from service.inference import DetectionEngine, check_span
from service.metrics import Metrics
from service.settings import Settings


class CloseCode(IntEnum):
    """WebSocket close codes the stream uses (RFC 6455 §7.4.1, plus 4408 for the idle timeout)."""

    NORMAL = 1000  # the client sent {"type": "close"}
    UNSUPPORTED_DATA = 1003  # a text message that is not one of the control messages (bad JSON, unknown type)
    INVALID_PAYLOAD = 1007  # event bytes that decode to invalid events (off the sensor, time going back)
    POLICY_VIOLATION = 1008  # missing or wrong API key; config after event data
    MESSAGE_TOO_BIG = 1009  # a message over max_message_bytes
    INTERNAL_ERROR = 1011  # a server fault (a bug: logged with its traceback)
    TRY_AGAIN_LATER = 1013  # max_sessions sessions already open
    IDLE_TIMEOUT = 4408  # nothing received for idle_timeout_s


class StreamError(Exception):
    """Ends a session: the client gets ``{"type": "error", "detail": ...}`` and then the close ``code``."""

    def __init__(self, code: CloseCode, detail: str) -> None:
        super().__init__(detail)
        self.code, self.detail = code, detail


class ConfigMessage(BaseModel):
    """``{"type": "config", ...}``: the encoding of the binary messages, the sensor size and the score threshold."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["config"]
    encoding: Literal["dat", "evt2", "evt3"] = "dat"
    width: int | None = Field(None, ge=1, le=16384)
    height: int | None = Field(None, ge=1, le=16384)
    score_threshold: float | None = Field(None, ge=0, le=1)


class CommandMessage(BaseModel):
    """``{"type": "flush" | "reset" | "close"}``."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["flush", "reset", "close"]


_CONTROL = TypeAdapter(Annotated[ConfigMessage | CommandMessage, Field(discriminator="type")])


def parse_control(text: str) -> ConfigMessage | CommandMessage:
    """A validated control message; raises :class:`StreamError` (1003) for anything else."""
    try:
        return _CONTROL.validate_python(json.loads(text))
    except json.JSONDecodeError as exc:
        raise StreamError(CloseCode.UNSUPPORTED_DATA, f"text message is not JSON: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'message'}: {e['msg']}" for e in exc.errors())
        raise StreamError(
            CloseCode.UNSUPPORTED_DATA,
            f"bad control message ({problems}); expected {{\"type\": \"config\"|\"flush\"|\"reset\"|\"close\"}}",
        ) from None


class StreamSession:
    """The per-connection state of ``/v1/stream``."""

    def __init__(self, engine: DetectionEngine, settings: Settings) -> None:
        self.engine, self.settings = engine, settings
        self.config = ConfigMessage(type="config")
        self.state: Any = None
        self.reset()

    def reset(self) -> None:
        """Forget everything received: membrane state, partial records, the window in progress."""
        self.engine.release(self.state)
        cfg = self.config
        # Without width/height the stream comes from the sensor the model was trained for.
        self.width, self.height = (cfg.width, cfg.height) if cfg.width and cfg.height else self.engine.sensor_size
        threshold = self.settings.score_threshold if cfg.score_threshold is None else cfg.score_threshold
        self.detector: StreamingDetector = self.engine.detector(self.width, self.height, threshold)
        self.decoder = stream_decoder(cfg.encoding)
        self.cutter = WindowCutter(self.engine.window_us)
        # a fresh filter on reset: its per-pixel memory holds absolute timestamps, and a reset may restart the clock
        denoise_us = self.settings.denoise_us
        self.denoiser = BackgroundActivityFilter(self.width, self.height, denoise_us) if denoise_us else None
        self.state = self.detector.init_state()
        self.received_data = False

    def configure(self, config: ConfigMessage) -> dict[str, Any]:
        """Apply a config message (only before event data or right after a reset); returns the acknowledgement."""
        if self.received_data:
            raise StreamError(CloseCode.POLICY_VIOLATION, "config must come before any event data (or after a reset)")
        if (config.width is None) != (config.height is None):
            raise StreamError(CloseCode.UNSUPPORTED_DATA, "config needs both width and height, or neither")
        self.config = config
        self.reset()
        return {
            "type": "ack", "command": "config", "encoding": config.encoding, "width": self.width,
            "height": self.height, "score_threshold": self.detector.conf_thres, "window_us": self.engine.window_us,
            "classes": self.engine.class_names,
        }

    def feed(self, data: bytes) -> list[Window]:
        """Decode a binary message and return the windows it completes (raises :class:`StreamError` 1007)."""
        self.received_data = True
        try:
            events = self.decoder.decode(data)
            # checked once: the denoiser validates its input, the cutter all but the sensor size
            if self.denoiser is not None:
                events = self.denoiser(events)
            elif len(events) and (events["x"].max() >= self.width or events["y"].max() >= self.height):
                validate_events(events, self.width, self.height)  # raises, naming the first event off the sensor
            if len(events):
                first = self.cutter.next_index
                check_span(int(events["t"][0]) // self.cutter.window_us if first is None else first,
                           int(events["t"][-1]), self.cutter.window_us, self.settings.max_windows)
            return self.cutter.push(events)
        except EventDataError as exc:
            raise StreamError(CloseCode.INVALID_PAYLOAD, str(exc)) from None

    def flush(self) -> list[Window]:
        """The window in progress, completed now (events older than its end are dropped from then on)."""
        return self.cutter.flush()

    def close(self) -> None:
        """Free the membrane state (an inference process may hold it)."""
        self.engine.release(self.state)
        self.state = None


class SessionRegistry:
    """At most ``max_sessions`` open sessions."""

    def __init__(self, max_sessions: int, metrics: Metrics) -> None:
        self.max_sessions, self.metrics = max_sessions, metrics
        self._open: set[StreamSession] = set()

    def __len__(self) -> int:
        return len(self._open)

    def open(self, engine: DetectionEngine, settings: Settings) -> StreamSession:
        """A new session, or :class:`StreamError` (1013) when the server is full."""
        if len(self._open) >= self.max_sessions:
            self.metrics.sessions.labels(outcome="refused").inc()
            raise StreamError(
                CloseCode.TRY_AGAIN_LATER, f"server full: {self.max_sessions} stream sessions open; try again later"
            )
        session = StreamSession(engine, settings)
        self._open.add(session)
        self.metrics.active_sessions.set(len(self._open))
        return session

    def close(self, session: StreamSession, outcome: str) -> None:
        """Forget ``session`` and count how it ended."""
        session.close()
        self._open.discard(session)
        self.metrics.active_sessions.set(len(self._open))
        self.metrics.sessions.labels(outcome=outcome).inc()
