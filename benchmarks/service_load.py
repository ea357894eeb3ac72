"""Stream load on a local server: N concurrent /v1/stream clients, each playing a recording at the sensor's pace.

For each number of streams: aggregate windows/s, p50/p99 window latency (from sending the message that completes
a window to receiving its detections), lost or reordered windows, the mean number of windows per forward pass (the
server's batching), the CPU the server (with its inference processes) and the clients used (in cores: CPU seconds
per wall second) and the server's memory. A level "holds the sensor's pace" when every stream got all its windows
(20 windows/s each at Δ = 50 ms), none lost or reordered, with p99 under 100 ms. ``--runtime numpy torch``,
``--processes auto off`` (inference processes) and ``--max-batch 16 1`` repeat the sweep on one server per engine,
process setting and batch limit (same run). An optional soak run samples the first server's memory for several
minutes. Writes ``benchmarks/results/service_load.json`` and prints a summary.

Usage: ``python benchmarks/service_load.py [--model PATH | --random] [--runtime auto numpy torch]
[--processes auto off] [--streams 1 4 8 16 24 32] [--seconds 10] [--max-batch 16 1] [--soak-seconds 300]``. The
server runs in its own process (``spquant serve`` with ``SPQUANT_RUNTIME`` set to the runtime and the model it serves
by default unless ``--model``) on 127.0.0.1; ``--url`` targets one that is already running on this machine instead.
The clients run in this process, on the same machine: on a small machine they take CPU time from the server (both
are reported). Clients send without permessage-deflate unless ``--compression deflate`` (deflate costs both ends CPU
to save a third of the bytes of a 10 ms message).
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
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from data.formats.dat import DatRecording, encode_dat_records
from data.windows import iter_windows
from models.inference.loading import RUNTIMES

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
               stats: StreamStats, compression: str | None) -> None:
    """Play ``records`` (looped, time shifted so it stays non-decreasing) for ``seconds`` at the sensor's pace."""
    loop_us = (int(records["t"][-1]) // window_us + 2) * window_us
    times = records["t"].astype(np.int64)  # searching the uint32 field for a Python int would convert it every tick
    sent: deque[tuple[float, int]] = deque()  # (wall time, last timestamp) of each binary message
    # this loop is busy: no keepalive
    async with connect(url, max_size=None, ping_interval=None, compression=compression) as ws:
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
        t0, start, index, shift = int(times[0]), time.perf_counter(), 0, 0
        while (elapsed := time.perf_counter() - start) < seconds:
            now_t = t0 + int(elapsed * 1e6) - shift
            stop = int(np.searchsorted(times, now_t, "right"))
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


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Linux): the server and its inference processes."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    todo.extend(int(child) for child in f.read().split())
    return pids


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of process ``pid`` and its descendants (all their threads) in seconds (Linux), None
    when unknown."""
    if pid is None:
        return None
    total = 0.0
    for process in process_tree(pid):
        with contextlib.suppress(OSError), open(f"/proc/{process}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    return total


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy so far, over all cores (Linux ``/proc/stat``)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


def rss_mb(pid: int | None) -> float | None:
    """Resident memory of process ``pid`` and its descendants in MiB (Linux), None when unknown."""
    if pid is None:
        return None
    total = 0.0
    for process in process_tree(pid):
        with contextlib.suppress(OSError), open(f"/proc/{process}/status") as f:
            total += next((int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:")), 0.0)
    return total


async def run_level(url: str, streams: int, records: np.ndarray, width: int, height: int, seconds: float,
                    window_us: int, compression: str | None, server_pid: int | None) -> dict[str, object]:
    """``streams`` clients at once; their combined figures."""
    stats = [StreamStats() for _ in range(streams)]
    start, server_cpu, machine_cpu = time.perf_counter(), cpu_seconds(server_pid), machine_busy_seconds()
    clients_cpu = time.process_time()
    outcomes = await asyncio.gather(*(play(url, records, width, height, seconds, window_us, s, compression)
                                      for s in stats), return_exceptions=True)
    for s, outcome in zip(stats, outcomes, strict=True):
        if isinstance(outcome, ConnectionClosed):  # e.g. the server's keepalive gave up on an overloaded client
            s.errors.append(f"connection closed: {outcome}")
        elif isinstance(outcome, BaseException):
            raise outcome
    wall = time.perf_counter() - start
    server_after = cpu_seconds(server_pid)
    cores = {
        "server": None if server_cpu is None or server_after is None else (server_after - server_cpu) / wall,
        "clients": (time.process_time() - clients_cpu) / wall,
        "machine": (machine_busy_seconds() - machine_cpu) / wall,  # everything, other jobs included
    }
    latencies = np.array([x for s in stats for x in s.latencies]) * 1000
    windows = sum(s.windows for s in stats)
    expected = streams * seconds * 1e6 / window_us
    p99 = float(np.percentile(latencies, 99)) if len(latencies) else None
    lost, reordered = sum(s.lost for s in stats), sum(s.reordered for s in stats)
    errors = sorted({e for s in stats for e in s.errors})
    return {
        "streams": streams,
        "seconds": seconds,
        "windows": windows,
        "windows_per_s": windows / wall,
        "expected_windows_at_pace": round(expected),
        "p50_ms": float(np.percentile(latencies, 50)) if len(latencies) else None,
        "p99_ms": p99,
        "lost_windows": lost,
        "reordered_windows": reordered,
        "errors": errors,
        "cpu_cores": cores,
        "at_pace": bool(p99 is not None and p99 < 100 and windows >= 0.97 * expected and not lost and not reordered
                        and not errors),
    }


def random_model(path: Path, recording: DatRecording) -> Path:
    """An untrained spquant-n at Gen1 size whose BN statistics come from the recording (so its layers fire)."""
    import torch  # lazy: only this option needs torch in the clients' process

    from models.inference.stream import StreamingDetector
    from models.networks.checkpoint import save_checkpoint
    from models.networks.detector import DetectorConfig, build_detector

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


def start_server(model: Path | None, port: int, max_sessions: int, max_batch: int, runtime: str,
                 processes: str) -> subprocess.Popen[bytes]:
    """``spquant serve`` in its own process (``model`` None: the one it serves by default; ``processes`` auto, on or
    off: SPQUANT_PROCESSES unset, true or false); returns once /healthz answers."""
    env = {**os.environ, "SPQUANT_MAX_SESSIONS": str(max_sessions), "SPQUANT_IDLE_TIMEOUT_S": "120",
           "SPQUANT_MAX_BATCH": str(max_batch), "SPQUANT_RUNTIME": runtime}
    env.pop("SPQUANT_MODEL", None)
    env.pop("SPQUANT_PROCESSES", None)
    if processes != "auto":
        env["SPQUANT_PROCESSES"] = str(processes == "on").lower()
    model_args = [] if model is None else ["--model", str(model)]
    process = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", *model_args, "--port", str(port)],
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
                                info["window_us"], args.compression, pid)
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
                               args.soak_seconds, info["window_us"], args.compression, pid)
        sampler.cancel()
        soak["rss_mb_samples"] = samples
        result["soak"] = soak
        print(json.dumps({k: v for k, v in soak.items() if k != "rss_mb_samples"}), samples[0], samples[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None,
                        help="checkpoint or .spq (default: what spquant serve serves for the runtime)")
    parser.add_argument("--random", action="store_true", help="an untrained, BN-calibrated spquant-n instead")
    parser.add_argument("--runtime", nargs="+", choices=RUNTIMES, default=["auto"],
                        help="SPQUANT_RUNTIME of the server: one sweep per value (auto: the service's default)")
    parser.add_argument("--url", default=None, help="a running server (http://127.0.0.1:PORT) instead of a new one")
    parser.add_argument("--recording", type=Path, default=SAMPLE, help="a .dat recording each stream plays")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4, 8, 16, 24, 32])
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per level")
    parser.add_argument("--max-batch", type=int, nargs="+", default=[16],
                        help="one sweep per value on its own server (1 = no batching, the baseline)")
    parser.add_argument("--processes", nargs="+", choices=("auto", "on", "off"), default=["auto"],
                        help="SPQUANT_PROCESSES of the server (inference processes; auto: unset): a sweep per value")
    parser.add_argument("--compression", choices=("none", "deflate"), default="none",
                        help="permessage-deflate offered by the clients")
    parser.add_argument("--soak-seconds", type=float, default=0.0, help="memory soak run length (0: none)")
    parser.add_argument("--soak-streams", type=int, default=4)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.compression = None if args.compression == "none" else args.compression
    recording = DatRecording(args.recording)
    load_start = os.getloadavg()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        random = random_model(Path(tmp) / "random.pt", recording) if args.random else None
        servers = [(None, None, None)] if args.url else [(r, p, b) for r in args.runtime for p in args.processes
                                                          for b in args.max_batch]
        for i, (runtime, processes, max_batch) in enumerate(servers):
            process = None
            if args.url is None:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", 0))
                    port = s.getsockname()[1]
                process = start_server(random or args.model, port, max(*args.streams, args.soak_streams) + 1,
                                       max_batch, runtime, processes)
                base = f"http://127.0.0.1:{port}"
            else:
                base = args.url.rstrip("/")
            print(f"-- server: runtime={runtime or 'as configured'}, processes={processes or 'as configured'}, "
                  f"max_batch={max_batch or 'as configured'}")
            try:
                run = asyncio.run(main_async(args, base, process.pid if process else None, recording, i == 0))
            finally:
                if process is not None:
                    process.terminate()
                    process.wait(30)
            runs.append({"runtime_setting": runtime, "processes_setting": processes, "max_batch": max_batch, **run})
    result = {
        "recording": str(args.recording),
        "clients": {"where": f"this process, on the same {os.cpu_count()}-core machine as the server",
                    "message_every_ms": TICK_S * 1000, "compression": args.compression or "none"},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg_start": load_start,
                    "load_avg_end": os.getloadavg()},
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_summary(runs)
    print(f"wrote {args.out}")


def print_summary(runs: list[dict]) -> None:
    """One line per (server, streams): throughput, latency, batching, losses, CPU, memory."""
    print(f"{'runtime':>7} {'procs':>5} {'batch':>5} {'streams':>7} {'win/s':>7} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'mean':>5} {'lost':>4} {'server':>6} {'client':>6} {'RSS MiB':>8} pace")
    for run in runs:
        for lv in run["levels"]:
            p50, p99 = (f"{lv[k]:.1f}" if lv[k] is not None else "-" for k in ("p50_ms", "p99_ms"))
            cores = lv["cpu_cores"]
            server = "-" if cores["server"] is None else f"{cores['server']:.2f}"
            rss = "-" if lv["server_rss_mb_after"] is None else f"{lv['server_rss_mb_after']:.0f}"
            print(f"{run['model']['runtime']:>7} {run['processes_setting'] or '-':>5} {run['max_batch'] or '-':>5} "
                  f"{lv['streams']:>7} {lv['windows_per_s']:>7.1f} {p50:>7} {p99:>7} {lv['mean_batch']:>5.1f} "
                  f"{lv['lost_windows'] + lv['reordered_windows']:>4} {server:>6} {cores['clients']:>6.2f} {rss:>8} "
                  f"{'yes' if lv['at_pace'] else 'no'}")
        print(f"{run['model']['runtime']}, processes {run['processes_setting'] or '-'}, max_batch="
              f"{run['max_batch'] or '-'}: {run['max_streams_at_pace']} streams at the sensor's pace")


if __name__ == "__main__":
    main()
