"""Event-data throughput: DAT/EVT2/EVT3 decoding vs expelliarmus, stacked histogram vs tonic's ToFrame.

All contenders see the same events in one run. Writes ``benchmarks/results/events.json`` and prints a table.
Usage: ``python benchmarks/events.py [--events N] [--repeats R]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from data.events import make_events
from data.formats.dat import DatRecording, write_dat
from data.formats.raw import RawRecording, write_raw
from data.representation import StackedHistogram

RESULTS = Path(__file__).resolve().parent / "results" / "events.json"


def _time(fn: Callable[[], object], repeats: int) -> dict[str, float]:
    fn()  # warm-up: page cache, JIT compilation
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return {"median_s": statistics.median(runs), "best_s": min(runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from expelliarmus import Wizard
    from tonic.transforms import ToFrame

    n = args.events
    rng = np.random.default_rng(0)
    # One 50 ms window holding all events, so the histogram sees exactly the same events as the decoders.
    events = make_events(
        np.sort(rng.integers(0, 50_000, n)), rng.integers(0, 304, n), rng.integers(0, 240, n), rng.integers(0, 2, n)
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        dat, evt2, evt3 = Path(tmp) / "bench_td.dat", Path(tmp) / "bench2.raw", Path(tmp) / "bench3.raw"
        write_dat(dat, events)
        write_raw(evt2, events, "evt2")
        write_raw(evt3, events, "evt3")
        assert np.array_equal(DatRecording(dat).read(), events)
        for name, path, encoding, ours in (
            ("DAT decode", dat, "dat", lambda p=dat: DatRecording(p).read()),
            ("EVT2 decode", evt2, "evt2", lambda p=evt2: RawRecording(p).read()),
            ("EVT3 decode", evt3, "evt3", lambda p=evt3: RawRecording(p).read()),
        ):
            wizard = Wizard(encoding=encoding)
            rows.append((name, "spquant", _time(ours, args.repeats)))
            rows.append((name, "expelliarmus", _time(lambda w=wizard, p=path: w.read(p), args.repeats)))

    histogram = StackedHistogram(bins=5, cutoff=255)
    rows.append(("histogram T=5", "spquant", _time(lambda: histogram(events, 0), args.repeats)))
    tonic_events = np.empty(n, dtype=[("x", "<i2"), ("y", "<i2"), ("t", "<i8"), ("p", "<i1")])
    for field in "xytp":
        tonic_events[field] = events[field]
    to_frame = ToFrame(sensor_size=(304, 240, 2), n_time_bins=5)
    rows.append(("histogram T=5", "tonic ToFrame", _time(lambda: to_frame(tonic_events), max(1, args.repeats // 2))))

    table = []
    for task, impl, timing in rows:
        baseline = next(t for k, i, t in rows if k == task and i != "spquant")
        table.append(
            {
                "task": task,
                "implementation": impl,
                "median_ms": round(timing["median_s"] * 1e3, 2),
                "best_ms": round(timing["best_s"] * 1e3, 2),
                "mevents_per_s": round(n / timing["median_s"] / 1e6, 1),
                "speedup_vs_peer": round(baseline["median_s"] / timing["median_s"], 2),
            }
        )
    report = {
        "events": n,
        "repeats": args.repeats,
        "machine": {"cpu_count": __import__("os").cpu_count(), "python": platform.python_version()},
        "results": table,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    print(f"{n:,} events, median of {args.repeats} runs")
    print(f"{'task':<14} {'implementation':<15} {'median ms':>10} {'Mev/s':>8} {'vs peer':>8}")
    for row in table:
        print(
            f"{row['task']:<14} {row['implementation']:<15} {row['median_ms']:>10.1f} {row['mevents_per_s']:>8.1f} "
            f"{row['speedup_vs_peer']:>7.2f}x"
        )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
