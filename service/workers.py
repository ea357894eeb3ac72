"""Inference worker processes: stream windows run in child processes, each with its own copy of the model.

Two inference threads of one process share its GIL with each other and with the event loop: the engine hands the
GIL back and forth at every kernel and numpy call. On the 2-core machine two threads ran the numpy engine at 1.5 times
the windows per second of one (less beside a busy event loop), two processes at 2.0 times; a server with inference
processes serves more streams at the sensor's pace than with threads (``benchmarks/service_load.py``). An
:class:`InferenceProcess` is a child (started with ``spawn``: no thread or lock state is inherited) that loads the
model, warms it up and then runs the batches its parent sends over a pipe through
:func:`service.batching.run_isolated`. A window goes there as plain data (its detector's sensor size and thresholds,
its events, start time and its stream's key) and comes back as ``(boxes, firing rate)``. The stream's state stays in
the child, under its key (a key the child has not seen is a fresh stream): it never crosses the pipe (126 KB per
window each way for the bundled model), so a stream's windows all run in one process (a :class:`RemoteState` names
it), and the keys of closed streams go with the next batch to be dropped. The child imports torch only for a torch
model.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import sys
import threading
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from data.events import empty_events, make_events
from models.inference.loading import load_model
from models.inference.stream import StreamingDetector, StreamModel, WindowJob, step_batch
from service.batching import Result, run_isolated

Payload = tuple[int, int, float, float, int, np.ndarray, int, int]  # sensor w, h, conf, iou, max_det, events, t0, key


@dataclass(frozen=True)
class RemoteState:
    """A stream's state as its session holds it when an inference process keeps it: which process, under which key."""

    process: int
    key: int


def warm_up_jobs(detector: StreamingDetector) -> list[WindowJob]:
    """An empty and a busy window of ``detector``'s sensor: run as one batch, they load (or compile) the kernels and
    allocate the buffers that a first client's window would otherwise wait for."""
    width, height = detector.letterbox.sensor_width, detector.letterbox.sensor_height
    rng = np.random.default_rng(0)
    n = width * height // 10  # a sparse histogram (the event-driven first conv) that makes layers spike
    busy = make_events(np.sort(rng.integers(0, detector.window_us, n)), rng.integers(0, width, n),
                       rng.integers(0, height, n), rng.integers(0, 2, n))
    return [WindowJob(detector, empty_events(), 0), WindowJob(detector, busy, 0)]


class InferenceProcess:
    """A child process running stream windows of the model at ``path`` (as :func:`load_model` loads it), started
    here; :meth:`wait_ready` waits for its start-up. :meth:`run` is for one caller at a time."""

    def __init__(self, path: Path, integer: bool, runtime: str) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child, str(path), integer, runtime), daemon=True,
                                        name="spquant-inference")
        self._process.start()
        child.close()
        self._lock = threading.Lock()
        self._dropped: deque[int] = deque()  # keys of closed streams, sent with the next batch (thread-safe appends)

    def wait_ready(self) -> None:
        """Block until the child has loaded and warmed up the model; raises what its start-up raised."""
        started = self._receive()
        if isinstance(started, BaseException):
            raise started

    def run(self, jobs: list[WindowJob]) -> list[Result | Exception]:
        """:func:`run_isolated` of ``jobs`` in the child (blocking); each job's ``state`` is its stream's
        :class:`RemoteState`, given back with its result (the new state stays in the child)."""
        payload: list[Payload] = [
            (job.detector.letterbox.sensor_width, job.detector.letterbox.sensor_height, job.detector.conf_thres,
             job.detector.iou_thres, job.detector.max_det, job.events, job.t_start, job.state.key) for job in jobs]
        dropped = [self._dropped.popleft() for _ in range(len(self._dropped))]
        with self._lock:
            self._conn.send((dropped, payload))
            results = self._receive()
        return [result if isinstance(result, BaseException) else (result[0], job.state, result[1])
                for job, result in zip(jobs, results, strict=True)]

    def release(self, key: int) -> None:
        """Forget the state of the stream ``key`` (in the child, with the next batch)."""
        self._dropped.append(key)

    def close(self) -> None:
        """Stop the child (after the batch it is running)."""
        if self._process.is_alive():
            with contextlib.suppress(OSError):  # it is gone already
                self._conn.send(None)
            self._process.join(30)
            if self._process.is_alive():
                self._process.kill()
        self._conn.close()

    def _receive(self) -> Any:
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            raise RuntimeError(f"the inference process exited (code {self._process.exitcode})") from None


def _serve(conn: Connection, path: str, integer: bool, runtime: str) -> None:  # pragma: no cover - child process
    """The child: load and warm up the model, then run batches until told to stop (None)."""
    from threadpoolctl import ThreadpoolController  # a base dependency; imported here, where the child starts

    try:
        model = load_model(path, integer, runtime)
        torch = sys.modules.get("torch")
        if torch is not None:  # a torch model: one intra-op thread, the processes give the parallelism
            torch.set_num_threads(1)
        ThreadpoolController().limit(limits=1, user_api="blas")  # for the child's life
        detectors: dict[tuple[int, int, float, float, int], StreamingDetector] = {}
        step_batch(warm_up_jobs(_detector(detectors, model, *model.config.sensor_size, 1.0, 0.6, 100)))
    except Exception as exc:
        conn.send(exc)
        return
    conn.send(None)
    states: dict[int, Any] = {}  # stream key → its state
    while (message := conn.recv()) is not None:
        dropped, payload = message
        for key in dropped:
            states.pop(key, None)
        jobs = [WindowJob(_detector(detectors, model, width, height, conf, iou, max_det), events, t_start,
                          states.get(key)) for width, height, conf, iou, max_det, events, t_start, key in payload]
        results = run_isolated(jobs)
        for (*_, key), result in zip(payload, results, strict=True):
            if not isinstance(result, BaseException):
                states[key] = result[1]
        conn.send([result if isinstance(result, BaseException) else (result[0], result[2]) for result in results])


def _detector(cache: dict[tuple[int, int, float, float, int], StreamingDetector], model: StreamModel, width: int,
              height: int, conf: float, iou: float, max_det: int) -> StreamingDetector:  # pragma: no cover - child
    key = (width, height, conf, iou, max_det)
    if key not in cache:
        cache[key] = StreamingDetector(model, conf, iou, max_det, (width, height))
    return cache[key]
