"""``spquant serve [--model PATH] [--host H] [--port P]``: run the detection service (REST, streams, demo page).

Other settings come from ``SPQUANT_*`` environment variables (see ``service/settings.py`` and the README):
``SPQUANT_MAX_SESSIONS``, ``SPQUANT_IDLE_TIMEOUT_S``, ``SPQUANT_MAX_REQUEST_BYTES``, ``SPQUANT_API_KEY``, ... The
model defaults to ``SPQUANT_MODEL``, else the bundled one. Open ``http://HOST:PORT/`` for the demo page and
``/docs`` for the API.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from service.settings import Settings


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``serve``."""
    parser = subparsers.add_parser("serve", help="run the detection service", description=__doc__)
    parser.add_argument("--model", type=Path, default=None,
                        help="detector checkpoint (default: $SPQUANT_MODEL, else the bundled model)")
    parser.add_argument("--host", default=None, help="interface to listen on (default: $SPQUANT_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default: $SPQUANT_PORT or 8000)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted."""
    # Imported here: the web stack is not needed by the other commands, which share the CLI's start-up time.
    import uvicorn

    from service.main import create_app, serving_model

    settings = Settings.from_env(model=args.model, host=args.host, port=args.port)
    model, _ = serving_model(settings)  # never imports torch for the bundled model's export
    if not model.is_file():
        raise FileNotFoundError(f"no such checkpoint: {model}")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, ws_max_size=settings.max_message_bytes)
    return 0
