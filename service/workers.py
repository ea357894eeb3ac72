"""Inference worker processes: stream windows run in child processes, each with its own copy of the model.

Two inference threads of one process share its GIL with each other and with the event loop: the engine hands the
GIL back and forth at every kernel and numpy call. On the 2-core machine two threads ran the numpy engine at 1.5 times
the windows per second of one (less beside a busy event loop), two processes at 2.0 times; a server with inference
processes serves 12 streams at the sensor's pace where its threads serve 8 (``benchmarks/service_load.py``). An
:class:`InferenceProcess` is a child (started with ``spawn``: no thread or lock state is inherited) that loads the
model, warms it up and then runs the batches its parent sends over a pipe through
:func:`service.batching.run_isolated`. A window goes there as plain data (its detector's sensor size and thresholds,
its events, start time and state) and comes back as ``(boxes, new state, firing rate)``; the session keeps its state
in the parent, so any process can run any window. The child imports torch only for a torch model.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import sys
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from data.events import empty_events, make_events
from models.inference.loading import load_model
from models.inference.stream import StreamingDetector, StreamModel, WindowJob, step_batch
from service.batching import Result, run_isolated

Payload = tuple[int, int, float, float, int, np.ndarray, int, Any]  # sensor w, h, conf, iou, max_det, events, t0, state


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

    def wait_ready(self) -> None:
        """Block until the child has loaded and warmed up the model; raises what its start-up raised."""
        started = self._receive()
        if isinstance(started, BaseException):
            raise started

    def run(self, jobs: list[WindowJob]) -> list[Result | Exception]:
        """:func:`run_isolated` of ``jobs`` in the child (blocking)."""
        payload: list[Payload] = [
            (job.detector.letterbox.sensor_width, job.detector.letterbox.sensor_height, job.detector.conf_thres,
             job.detector.iou_thres, job.detector.max_det, job.events, job.t_start, job.state) for job in jobs]
        with self._lock:
            self._conn.send(payload)
            return self._receive()

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
    while (payload := conn.recv()) is not None:
        jobs = [WindowJob(_detector(detectors, model, width, height, conf, iou, max_det), events, t_start, state)
                for width, height, conf, iou, max_det, events, t_start, state in payload]
        conn.send(run_isolated(jobs))


def _detector(cache: dict[tuple[int, int, float, float, int], StreamingDetector], model: StreamModel, width: int,
              height: int, conf: float, iou: float, max_det: int) -> StreamingDetector:  # pragma: no cover - child
    key = (width, height, conf, iou, max_det)
    if key not in cache:
        cache[key] = StreamingDetector(model, conf, iou, max_det, (width, height))
    return cache[key]
