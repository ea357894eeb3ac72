"""Service settings, read from ``SPQUANT_*`` environment variables (every one optional)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

ENV_PREFIX = "SPQUANT_"


@dataclass(frozen=True)
class Settings:
    """Everything the service can be configured with; ``SPQUANT_<FIELD>`` in the environment sets a field.

    Attributes:
        model: detector checkpoint (``SPQUANT_MODEL``); None means the bundled model.
        host, port: where ``spquant serve`` listens.
        max_sessions: concurrent ``/v1/stream`` sessions; one more is refused with close code 1013.
        idle_timeout_s: a stream session that sends nothing for this long is closed (code 4408).
        max_request_bytes: largest HTTP request body (413 above it).
        max_events_per_request: most events one ``/v1/detect`` request may carry (413 above it).
        max_message_bytes: largest WebSocket message (the session is closed with 1009 above it).
        max_windows: most windows one request may span, or one stream message may complete (a guard against
            timestamp jumps that would open millions of empty windows).
        api_key: when set, every route but ``/healthz`` and the demo page needs it (header ``X-API-Key``; streams
            may pass ``?api_key=`` since browsers cannot set WebSocket headers).
        integer: run a quantized checkpoint (``.pt``) as the integer runtime it exports to (int8 membranes,
            integer convolutions: what runs on the edge, and faster); false runs the fake-quant PyTorch model. FP32
            checkpoints and exported ``.spq`` models run as they are.
        max_batch: most stream windows (of different sessions) run as one forward pass; 1 turns batching off.
        threads: inference worker threads (the model runs there, never on the event loop).
        torch_threads: torch intra-op threads per forward pass. 1 is best for a server: streams run in parallel on
            the worker threads, and several intra-op threads on a busy machine can make a forward pass 100x slower.
        score_threshold: default minimum detection score (a request or stream may ask for another).
    """

    model: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    max_sessions: int = 64
    idle_timeout_s: float = 60.0
    max_request_bytes: int = 64 << 20
    max_events_per_request: int = 5_000_000
    max_message_bytes: int = 8 << 20
    max_windows: int = 12_000
    api_key: str | None = None
    integer: bool = True
    max_batch: int = 16
    threads: int = 2
    torch_threads: int = 1
    score_threshold: float = 0.25

    def __post_init__(self) -> None:
        for name in ("port", "max_sessions", "max_request_bytes", "max_events_per_request", "max_message_bytes",
                     "max_windows", "max_batch", "threads", "torch_threads"):
            if getattr(self, name) <= 0:
                raise ValueError(f"setting {name} must be positive, got {getattr(self, name)}")
        if self.idle_timeout_s <= 0:
            raise ValueError(f"setting idle_timeout_s must be positive, got {self.idle_timeout_s}")
        if not 0 <= self.score_threshold <= 1:
            raise ValueError(f"setting score_threshold must lie in [0, 1], got {self.score_threshold}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Settings from ``SPQUANT_*`` variables, then ``overrides`` (None values are ignored).

        Raises:
            ValueError: a variable that does not parse (the message names it).
        """
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for field in fields(cls):
            raw = environ.get(ENV_PREFIX + field.name.upper())
            if raw is None or raw == "":
                continue
            kind = str(field.type)
            try:
                if "Path" in kind:
                    values[field.name] = Path(raw)
                elif kind == "bool":
                    values[field.name] = _flag(raw)
                elif "int" in kind:
                    values[field.name] = int(raw)
                elif "float" in kind:
                    values[field.name] = float(raw)
                else:
                    values[field.name] = raw
            except ValueError:
                raise ValueError(f"{ENV_PREFIX}{field.name.upper()}={raw!r} is not a valid {kind}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _flag(raw: str) -> bool:
    """An environment flag: 1/true/yes/on or 0/false/no/off (any case)."""
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)
