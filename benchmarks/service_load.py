"""Stream load on a local server: N concurrent /v1/stream clients, each playing a recording at the sensor's pace.

For each number of streams: aggregate windows/s, p50/p99 window latency (from sending the message that completes
a window to receiving its detections), lost or reordered windows, the mean number of windows per forward pass (the
server's batching) and the server's memory. A level "holds the sensor's pace" when every stream got all its windows
(20 windows/s each at Δ = 50 ms) with p99 under 100 ms. ``--max-batch 16 1`` repeats the sweep on a server that
batches up to 16 windows and on one that does not (the baseline, same run). An optional soak run samples the
server's memory for several minutes. Writes ``benchmarks/results/service_load.json`` and prints a summary.

Usage: ``python benchmarks/service_load.py [--model PATH | --random] [--streams 1 4 16 64] [--seconds 10]
[--max-batch 16 1] [--soak-seconds 300]``. The server runs in its own process (``spquant serve``) on 127.0.0.1;
``--url`` targets one that is already running on this machine instead. The clients run in this process, on the
same machine: on a small machine they take CPU time from the server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import deque
from pathlib import Path

import numpy as np
import torch
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from data.formats.dat import DatRecording, encode_dat_records
from data.windows import iter_windows
from models.inference.bundled import default_model_path
from models.inference.stream import StreamingDetector
from models.networks.checkpoint import save_checkpoint
from models.networks.detector import DetectorConfig, build_detector

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "service_load.json"
SAMPLE = ROOT / "data" / "samples" / "street_td.dat"
TICK_S = 0.01  # clients send what the sensor produced every 10 ms


class StreamStats:
    """What one client saw."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.windows = 0
        self.lost = 0
        self.reordered = 0
        self.errors: list[str] = []


async def play(url: str, records: np.ndarray, width: int, height: int, seconds: float, window_us: int,
               stats: StreamStats) -> None:
    """Play ``records`` (looped, time shifted so it stays non-decreasing) for ``seconds`` at the sensor's pace."""
    loop_us = (int(records["t"][-1]) // window_us + 2) * window_us
    sent: deque[tuple[float, int]] = deque()  # (wall time, last timestamp) of each binary message
    async with connect(url, max_size=None, ping_interval=None) as ws:  # this loop is busy: no keepalive
        await ws.send(json.dumps({"type": "config", "encoding": "dat", "width": width, "height": height}))
        json.loads(await ws.recv())

        async def receive() -> None:
            expected = None
            async for raw in ws:
                message = json.loads(raw)
                if message["type"] == "ack" and message["command"] == "flush":
                    return
                if message["type"] == "error":
                    stats.errors.append(message["detail"])
                    return
                if message["type"] != "detections":
                    continue
                now = time.perf_counter()
                t_start, t_end = message["t_start"], message["t_end"]
                if expected is not None and t_start != expected:
                    stats.lost += max(0, (t_start - expected) // window_us)
                    stats.reordered += t_start < expected
                expected = t_end
                stats.windows += 1
                while sent and sent[0][1] < t_end:
                    sent.popleft()
                if sent:
                    stats.latencies.append(now - sent[0][0])

        receiver = asyncio.create_task(receive())
        await asyncio.sleep(np.random.default_rng(id(stats) % 2**32).uniform(0, window_us / 1e6))  # unsynced
        t0, start, index, shift = int(records["t"][0]), time.perf_counter(), 0, 0
        while (elapsed := time.perf_counter() - start) < seconds:
            now_t = t0 + int(elapsed * 1e6) - shift
            stop = int(np.searchsorted(records["t"], now_t, "right"))
            if stop > index:
                chunk = records[index:stop].copy()
                chunk["t"] += shift
                sent.append((time.perf_counter(), int(chunk["t"][-1])))
                await ws.send(chunk.tobytes())
                index = stop
            if index == len(records):  # loop the recording
                index, shift = 0, shift + loop_us
            await asyncio.sleep(TICK_S)
        sent.append((time.perf_counter(), 2**62))  # the flush completes the last window
        await ws.send(json.dumps({"type": "flush"}))
        await receiver


def rss_mb(pid: int | None) -> float | None:
    """Resident memory of process ``pid`` in MiB (Linux), None when unknown."""
    if pid is None:
        return None
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


async def run_level(url: str, streams: int, records: np.ndarray, width: int, height: int, seconds: float,
                    window_us: int) -> dict[str, object]:
    """``streams`` clients at once; their combined figures."""
    stats = [StreamStats() for _ in range(streams)]
    start = time.perf_counter()
    outcomes = await asyncio.gather(*(play(url, records, width, height, seconds, window_us, s) for s in stats),
                                    return_exceptions=True)
    for s, outcome in zip(stats, outcomes, strict=True):
        if isinstance(outcome, ConnectionClosed):  # e.g. the server's keepalive gave up on an overloaded client
            s.errors.append(f"connection closed: {outcome}")
        elif isinstance(outcome, BaseException):
            raise outcome
    wall = time.perf_counter() - start
    latencies = np.array([x for s in stats for x in s.latencies]) * 1000
    windows = sum(s.windows for s in stats)
    expected = streams * seconds * 1e6 / window_us
    p99 = float(np.percentile(latencies, 99)) if len(latencies) else None
    return {
        "streams": streams,
        "seconds": seconds,
        "windows": windows,
        "windows_per_s": windows / wall,
        "expected_windows_at_pace": round(expected),
        "p50_ms": float(np.percentile(latencies, 50)) if len(latencies) else None,
        "p99_ms": p99,
        "lost_windows": sum(s.lost for s in stats),
        "reordered_windows": sum(s.reordered for s in stats),
        "errors": sorted({e for s in stats for e in s.errors}),
        "at_pace": bool(p99 is not None and p99 < 100 and windows >= 0.97 * expected and not any(s.errors
                                                                                                  for s in stats)),
    }


def random_model(path: Path, recording: DatRecording) -> Path:
    """An untrained spquant-n at Gen1 size whose BN statistics come from the recording (so its layers fire)."""
    model = build_detector(DetectorConfig()).train()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
    detector = StreamingDetector(model)
    with torch.no_grad():
        for window in list(iter_windows(recording, model.config.window_us))[:8]:
            counts = detector.histogram(detector.letterbox.map_events(window.events), window.t_start)
            model(torch.from_numpy(counts).unsqueeze(1))
    return save_checkpoint(path, model.eval())


def start_server(model: Path, port: int, max_sessions: int, max_batch: int) -> subprocess.Popen[bytes]:
    """``spquant serve`` in its own process; returns once /healthz answers."""
    env = {**os.environ, "SPQUANT_MAX_SESSIONS": str(max_sessions), "SPQUANT_IDLE_TIMEOUT_S": "120",
           "SPQUANT_MAX_BATCH": str(max_batch)}
    process = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--model", str(model), "--port", str(port)],
                               cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
            return process
        if process.poll() is not None:
            raise RuntimeError("the server exited during start-up")
        time.sleep(0.3)
    process.terminate()
    raise RuntimeError("the server did not start in 120 s")


def batch_counts(base: str) -> tuple[float, float]:
    """(windows, forward passes) the server's batcher has run so far, from its Prometheus metrics."""
    with urllib.request.urlopen(f"{base}/metrics") as response:
        lines = response.read().decode().splitlines()
    values = {line.split()[0]: float(line.split()[1]) for line in lines if line.startswith("spquant_batch_windows_")}
    return values.get("spquant_batch_windows_sum", 0.0), values.get("spquant_batch_windows_count", 0.0)


async def main_async(args: argparse.Namespace, base: str, pid: int | None, recording: DatRecording,
                     soak: bool) -> dict:
    records = encode_dat_records(recording.read())
    with urllib.request.urlopen(f"{base}/v1/model") as response:
        info = json.load(response)
    url = base.replace("http", "ws", 1) + "/v1/stream"
    levels = []
    for streams in args.streams:
        rss_before, (windows_before, passes_before) = rss_mb(pid), batch_counts(base)
        level = await run_level(url, streams, records, recording.width, recording.height, args.seconds,
                                info["window_us"])
        windows_after, passes_after = batch_counts(base)
        level["mean_batch"] = (windows_after - windows_before) / max(1.0, passes_after - passes_before)
        level["server_rss_mb_before"], level["server_rss_mb_after"] = rss_before, rss_mb(pid)
        levels.append(level)
        print(json.dumps(level))
    result = {
        "model": {k: info.get(k) for k in ("path", "runtime", "variant", "scale", "input_width", "input_height",
                                           "params")},
        "levels": levels,
        "max_streams_at_pace": max((lv["streams"] for lv in levels if lv["at_pace"]), default=0),
    }
    if soak and args.soak_seconds:
        samples = []

        async def sample() -> None:
            while True:
                samples.append((round(time.perf_counter() - start, 1), rss_mb(pid)))
                await asyncio.sleep(10)

        start = time.perf_counter()
        sampler = asyncio.create_task(sample())
        soak = await run_level(url, args.soak_streams, records, recording.width, recording.height,
                               args.soak_seconds, info["window_us"])
        sampler.cancel()
        soak["rss_mb_samples"] = samples
        result["soak"] = soak
        print(json.dumps({k: v for k, v in soak.items() if k != "rss_mb_samples"}), samples[0], samples[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="checkpoint (default: the bundled model)")
    parser.add_argument("--random", action="store_true", help="an untrained, BN-calibrated spquant-n instead")
    parser.add_argument("--url", default=None, help="a running server (http://127.0.0.1:PORT) instead of a new one")
    parser.add_argument("--recording", type=Path, default=SAMPLE, help="a .dat recording each stream plays")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per level")
    parser.add_argument("--max-batch", type=int, nargs="+", default=[16],
                        help="one sweep per value on its own server (1 = no batching, the baseline)")
    parser.add_argument("--soak-seconds", type=float, default=0.0, help="memory soak run length (0: none)")
    parser.add_argument("--soak-streams", type=int, default=4)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    recording = DatRecording(args.recording)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or default_model_path()
        if args.random:
            model = random_model(Path(tmp) / "random.pt", recording)
        for i, max_batch in enumerate([None] if args.url else args.max_batch):
            process = None
            if args.url is None:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", 0))
                    port = s.getsockname()[1]
                process = start_server(model, port, max(*args.streams, args.soak_streams) + 1, max_batch)
                base = f"http://127.0.0.1:{port}"
            else:
                base = args.url.rstrip("/")
            print(f"-- server with max_batch={max_batch or 'as configured'}")
            try:
                run = asyncio.run(main_async(args, base, process.pid if process else None, recording, i == 0))
            finally:
                if process is not None:
                    process.terminate()
                    process.wait(30)
            runs.append({"max_batch": max_batch, **run})
    result = {
        "recording": str(args.recording),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg": os.getloadavg()},
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_summary(runs)
    print(f"wrote {args.out}")


def print_summary(runs: list[dict]) -> None:
    """One line per (server, streams): throughput, latency, batching, losses, memory."""
    print(f"{'max_batch':>9} {'streams':>7} {'win/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'batch':>5} {'lost':>4} "
          f"{'reord':>5} {'RSS MiB':>8} pace")
    for run in runs:
        for lv in run["levels"]:
            p50, p99 = (f"{lv[k]:.1f}" if lv[k] is not None else "-" for k in ("p50_ms", "p99_ms"))
            rss = lv["server_rss_mb_after"]
            print(f"{run['max_batch'] or '-':>9} {lv['streams']:>7} {lv['windows_per_s']:>7.1f} {p50:>7} {p99:>7} "
                  f"{lv['mean_batch']:>5.1f} {lv['lost_windows']:>4} {lv['reordered_windows']:>5} "
                  f"{rss if rss is None else round(rss):>8} {'yes' if lv['at_pace'] else 'no'}")
        print(f"max_batch={run['max_batch'] or '-'}: {run['max_streams_at_pace']} streams at the sensor's pace")


if __name__ == "__main__":
    main()
