"""Service settings, read from ``SPQUANT_*`` environment variables (every one optional)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "SPQUANT_"


class Settings(BaseSettings):
    """Everything the service can be configured with; ``SPQUANT_<FIELD>`` in the environment sets a field.

    ``Settings(...)`` reads the process environment for the fields it is not given (pydantic-settings);
    ``Settings.from_env`` reads a given mapping and reports bad values by variable name.

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
        runtime: the engine of an exported ``.spq`` model (``SPQUANT_RUNTIME``): ``torch`` (the integer runtime in
            PyTorch), ``numpy`` (the torch-free engine: same states bit for bit, boxes to float rounding) or ``auto``
            (numpy for exported models and the bundled one, whose export it serves: more streams per core, measured;
            torch for checkpoints, which need it). Checkpoints need torch.
        max_batch: most stream windows (of different sessions) run as one forward pass; 1 turns batching off.
        threads: inference worker threads (the model runs there, never on the event loop).
        processes: run stream windows in inference processes, one per thread, each with a copy of the model: unlike
            the threads of one process they share no GIL (with each other or the event loop), so they use the cores
            (``SPQUANT_PROCESSES``). Unset: for the numpy engine on a machine with more than one CPU.
        torch_threads: torch intra-op threads per forward pass. 1 is best for a server: streams run in parallel on
            the worker threads, and several intra-op threads on a busy machine can make a forward pass 100x slower.
        score_threshold: default minimum detection score (a request or stream may ask for another).
        denoise_us: background-activity filter on every request and stream (``spquant predict --denoise-us``): drop
            events with no neighbouring pixel active in the last this many µs (0 = off; for cameras whose background
            noise fires false alarms; it costs AP on clean data).
    """

    # extra="forbid" rejects unknown constructor keywords. It does not make unrelated SPQUANT_* variables (such as
    # the tests' SPQUANT_CHROMIUM) fatal: the environment source only looks up the fields' own variables.
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True, extra="forbid", frozen=True)

    model: Path | None = None
    host: str = "127.0.0.1"
    port: int = Field(8000, gt=0)
    max_sessions: int = Field(64, gt=0)
    idle_timeout_s: float = Field(60.0, gt=0)
    max_request_bytes: int = Field(64 << 20, gt=0)
    max_events_per_request: int = Field(5_000_000, gt=0)
    max_message_bytes: int = Field(8 << 20, gt=0)
    max_windows: int = Field(12_000, gt=0)
    api_key: str | None = None
    integer: bool = True
    runtime: Literal["auto", "numpy", "torch"] = "auto"
    max_batch: int = Field(16, gt=0)
    threads: int = Field(2, gt=0)
    processes: bool | None = None
    torch_threads: int = Field(1, gt=0)
    score_threshold: float = Field(0.25, ge=0, le=1)
    denoise_us: int = Field(0, ge=0)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Settings from ``SPQUANT_*`` variables in ``environ`` (default ``os.environ``), then ``overrides``.

        Empty variables and None overrides are ignored.

        Raises:
            ValueError: a value that does not parse or lies out of range (the message names the variable), or an
                unknown override.
        """
        environ = os.environ if environ is None else environ
        # Every field is passed explicitly (its default where nothing sets it), so that only `environ` counts:
        # BaseSettings would otherwise fill the missing fields from os.environ.
        values: dict[str, object] = {name: field.default for name, field in cls.model_fields.items()}
        variables: dict[str, str] = {}  # field -> the variable that set it, for error messages
        for name in cls.model_fields:
            variable = ENV_PREFIX + name.upper()
            raw = environ.get(variable)
            if raw:  # unset or empty
                values[name] = raw
                variables[name] = variable
        for name, value in overrides.items():
            if value is not None:
                values[name] = value
                variables.pop(name, None)
        try:
            return cls(**values)
        except ValidationError as exc:
            raise ValueError("; ".join(_describe(error, variables) for error in exc.errors())) from exc


def _describe(error: ErrorDetails, variables: Mapping[str, str]) -> str:
    """One validation error as ``SPQUANT_PORT='abc' (setting port): <pydantic's message>``."""
    name = str(error["loc"][0]) if error["loc"] else "settings"
    if error["type"] == "extra_forbidden":
        return f"unknown setting {name}"
    if name in variables:
        return f"{variables[name]}={error['input']!r} (setting {name}): {error['msg']}"
    return f"setting {name}={error['input']!r}: {error['msg']}"
