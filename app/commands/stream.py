"""``spquant stream SOURCE --url ws://HOST:PORT [--api-key K] [--pace sensor|max] [--out DETS.npy]``: stream a
recording (or a camera's raw output) to a running ``spquant serve`` and collect its detections.

SOURCE is a ``.dat`` or ``.raw`` recording (sent as DAT records, with the sensor size from its header), or ``-`` for
RAW EVT 2.0/3.0 words on standard input, forwarded as they come (a camera host piping its sensor; a leading ``%``
header is read for the encoding and geometry, else give ``--encoding`` and ``--width``/``--height``). ``--pace
sensor`` sends the events at the recording's own pace (the wall clock follows the event times); ``max`` as fast as
the server takes them. ``--out`` writes the detections in the label dtype, exactly as ``spquant predict`` writes
them for the same model. A session the server ends (1008 API key, 1009 message too big, 1013 server full, 4408 idle,
1011 server fault, ...) or a server that cannot be reached ends the command with a one-line error and exit code 2;
there is no reconnect (the membrane state lives in the session).
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from app.stream_client import (
    ENCODINGS,
    PACES,
    Payload,
    StreamClient,
    StreamClientError,
    dat_payloads,
    windows_to_boxes,
)

_STDIN_CHUNK = 1 << 16


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``stream``."""
    parser = subparsers.add_parser("stream", help="stream a recording or a camera to a running detection service",
                                   description=__doc__)
    parser.add_argument("source", help="a .dat or .raw recording, or '-' for RAW EVT2/EVT3 words on standard input")
    parser.add_argument("--url", required=True, help="the service, ws://HOST:PORT (or its full /v1/stream URL)")
    parser.add_argument("--api-key", default=None, help="the service's API key (sent as X-API-Key)")
    parser.add_argument("--pace", choices=PACES, default="max",
                        help="sensor: at the events' own pace; max: as fast as the server reads (default)")
    parser.add_argument("--out", type=Path, default=None, help="write the detections here (.npy, label dtype)")
    parser.add_argument("--encoding", choices=ENCODINGS, default=None,
                        help="of standard input (default: from its '%%' header)")
    parser.add_argument("--width", type=int, default=None, help="sensor width (standard input without a header)")
    parser.add_argument("--height", type=int, default=None, help="sensor height (standard input without a header)")
    parser.add_argument("--conf", type=float, default=None, help="score threshold (default: the server's)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Stream the source, show progress, print a summary and write the detections."""
    if args.conf is not None and not 0 <= args.conf <= 1:
        raise ValueError("--conf must lie in [0, 1]")
    if (args.width is None) != (args.height is None) or any(v is not None and v < 1 for v in (args.width, args.height)):
        raise ValueError("give --width and --height together, both positive")
    if args.source == "-":
        encoding, width, height, payloads, span = _stdin_source(args)
    else:
        if args.encoding is not None:
            raise ValueError("--encoding is for standard input ('-'); a file's header names its format")
        encoding, width, height, payloads, span = _file_source(Path(args.source), args)
    client = StreamClient(args.url, api_key=args.api_key, encoding=encoding, width=width, height=height,
                          score_threshold=args.conf)
    windows = []
    try:
        with client:
            window_us = int(client.ack.get("window_us") or 0)
            total = span[1] // window_us - span[0] // window_us + 1 if span and window_us > 0 else None
            bar = tqdm(total=total, unit="window", desc="stream", delay=1.0, file=sys.stderr)
            with bar:
                for window in client.stream(payloads, pace=args.pace):
                    windows.append(window)
                    bar.update(1)
                    bar.set_postfix(detections=sum(len(w["detections"]) for w in windows), refresh=False)
    except StreamClientError as exc:
        raise ValueError(str(exc)) from None
    detections = windows_to_boxes(windows)
    if args.out is not None:
        from data.formats.labels import write_labels

        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_labels(args.out, detections)
    classes = client.ack.get("classes") or []
    counts = {name: int((detections["class_id"] == i).sum()) for i, name in enumerate(classes)}
    where = f"; wrote {args.out}" if args.out is not None else ""
    print(f"streamed {len(windows)} windows to {client.url}: {len(detections)} detections {counts}{where}")
    return 0


Span = tuple[int, int] | None  # first and last event time of a file: how many windows to expect


def _file_source(path: Path, args: argparse.Namespace
                 ) -> tuple[str, int | None, int | None, Iterator[Payload], Span]:
    from app.commands.info import checked_chunks
    from data.formats.recording import header_geometry, open_recording

    recording = open_recording(path)
    geometry = header_geometry(recording)
    if args.width is not None:
        geometry = (args.width, args.height)
    if geometry is not None:
        recording = open_recording(path, *geometry)
    t_first, t_last = getattr(recording, "t_first", None), getattr(recording, "t_last", None)
    span = (t_first, t_last) if t_first is not None and t_last is not None else None  # DAT only: RAW must decode
    # no geometry in the header: the server's default sensor, as `spquant predict` assumes the model's
    chunks = checked_chunks(recording) if geometry is not None else recording.iter_chunks()
    width, height = geometry if geometry is not None else (None, None)
    return "dat", width, height, dat_payloads(chunks), span


def _stdin_source(args: argparse.Namespace) -> tuple[str, int | None, int | None, Iterator[Payload], Span]:
    from data.formats.header import read_header
    from data.formats.raw import raw_encoding, raw_geometry

    stream: BinaryIO = sys.stdin.buffer
    header_bytes = b""
    while stream.peek(1)[:1] == b"%":
        line = stream.readline(4096)
        header_bytes += line
        if line[1:].strip() == b"end":
            break
    encoding, geometry = args.encoding, None
    if header_bytes:
        header = read_header(io.BytesIO(header_bytes), "<stdin>")
        encoding = encoding or raw_encoding(header)
        geometry = raw_geometry(header)
    if args.width is not None:
        geometry = (args.width, args.height)
    if encoding not in ("evt2", "evt3"):
        raise ValueError("standard input needs --encoding evt2|evt3 (or a RAW '% evt' header)")
    width, height = geometry if geometry is not None else (None, None)
    return encoding, width, height, _stdin_payloads(stream, encoding), None


def _stdin_payloads(stream: BinaryIO, encoding: str) -> Iterator[Payload]:
    """Standard input's bytes as they come, with the time of their last event (decoded here only for pacing)."""
    from data.formats.raw import DECODERS

    decoder = DECODERS[encoding]()
    while True:
        data = stream.read1(_STDIN_CHUNK) if hasattr(stream, "read1") else stream.read(_STDIN_CHUNK)
        if not data:
            return
        events = decoder.decode(data)
        yield data, int(events["t"][-1]) if len(events) else None
