"""The loaded detector behind the service: worker threads that run :class:`models.inference.stream.StreamingDetector`.

Every window of every request and stream goes through the streaming detector — the code path of ``spquant predict``
and ``eval`` — on a worker thread, never on the event loop. Stream windows are batched across sessions (one forward
pass for the windows waiting at that moment, see :mod:`service.batching`): each window gets the states
``StreamingDetector.step`` gives it alone and the same boxes to float rounding. With inference processes
(:mod:`service.workers`), each batching worker sends its batches to a process of its own instead, where a copy of
the model runs them; a new stream goes to the process with the fewest streams, which keeps its state from then on
(the session holds a :class:`~service.workers.RemoteState` and :meth:`DetectionEngine.release` frees it). The model
is only read; each caller owns its state, so requests and sessions never share one.

The model is a trained :class:`~models.networks.detector.SpikingYOLO`, the integer
:class:`~models.inference.runtime.Runtime` or the torch-free :class:`~models.inference.numpy_runtime.NumpyRuntime`;
this module imports torch only to describe a torch model (an exported model served on numpy never loads it).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from data.denoise import BackgroundActivityFilter
from data.errors import EventValidationError
from data.events import validate_events
from data.windows import iter_windows
from models.inference.loading import runtime_name
from models.inference.numpy_runtime import NumpyRuntime
from models.inference.stream import StreamingDetector, StreamModel, WindowJob, step_batch
from service.batching import WindowBatcher
from service.errors import PayloadTooLargeError
from service.metrics import Metrics
from service.schemas import window_json
from service.workers import InferenceProcess, RemoteState, warm_up_jobs

T = TypeVar("T")
_SIZE_KEYS = ("conv_layers", "channels", "params", "weight_bytes", "state_bytes_per_stream")  # GET /v1/model


class DetectionEngine:
    """One model, shared read-only by every request and session, and the threads that run it; with ``processes``
    (``(integer, runtime)`` of :func:`~models.inference.loading.load_model`, as ``model`` was loaded from ``path``) as
    many inference processes as threads, one per batching worker, run the stream windows."""

    def __init__(self, model: StreamModel, path: Path, threads: int, metrics: Metrics, max_batch: int = 16,
                 processes: tuple[bool, str] | None = None) -> None:
        self.model = model  # the streaming detectors put a torch model in eval mode
        self.path = path
        self.config = model.config
        self.class_names = list(self.config.class_names)
        self.metrics = metrics
        self._processes = [InferenceProcess(path, *processes) for _ in range(threads)] if processes else []
        try:  # they load the model at the same time
            for process in self._processes:
                process.wait_ready()
        except BaseException:
            for process in self._processes:
                process.close()
            raise
        self._streams = [0] * len(self._processes)  # live streams per process: a new one goes to the least busy
        self._keys = itertools.count()  # stream keys are never reused, so a key a process has not seen is a new stream
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="spquant-infer")
        self._batcher = WindowBatcher(self._executor, threads, max_batch, self._batch_done,
                                      [p.run for p in self._processes] or None)
        self._info = _describe(model, path)

    @property
    def window_us(self) -> int:
        """Window length Δ in µs."""
        return self.config.window_us

    @property
    def sensor_size(self) -> tuple[int, int]:
        """(width, height) of the sensor the model was trained for: what a request that names none is taken to use."""
        return self.config.sensor_size

    def info(self) -> dict[str, Any]:
        """What ``GET /v1/model`` reports."""
        return self._info

    def detector(self, width: int, height: int, score_threshold: float) -> StreamingDetector:
        """A streaming detector for a ``width`` × ``height`` sensor (letterboxed into the model input)."""
        return StreamingDetector(self.model, conf_thres=score_threshold, sensor_size=(width, height))

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on an inference thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def step(self, detector: StreamingDetector, events: np.ndarray, t_start: int, state: Any) -> tuple[
            np.ndarray, Any, float]:
        """One window of one stream, batched with the other streams' waiting windows: (boxes, new state, the
        network's firing rate in that window). With inference processes the state is a :class:`RemoteState` (None:
        a new stream); :meth:`release` frees it when the stream ends."""
        if not self._processes:
            return await self._batcher.step(WindowJob(detector, events, t_start, state))
        new = state is None
        if new:
            process = min(range(len(self._processes)), key=self._streams.__getitem__)
            self._streams[process] += 1
            state = RemoteState(process, next(self._keys))
        try:
            return await self._batcher.step(WindowJob(detector, events, t_start, state), state.process)
        except BaseException:
            if new:  # the caller never gets the handle
                self.release(state)
            raise

    def release(self, state: Any) -> None:
        """Forget a stream's state (its session ended or was reset): the inference process that holds it drops it."""
        if isinstance(state, RemoteState):
            self._streams[state.process] -= 1
            self._processes[state.process].release(state.key)

    def warm_up(self) -> None:
        """Run an empty and a busy window as one batch (blocking): the compiled kernels load (or compile) and buffers
        are allocated before the first client, not in its first window (inference processes warm up as they start)."""
        step_batch(warm_up_jobs(self.detector(*self.sensor_size, 1.0)))

    def _batch_done(self, windows: int, seconds: float) -> None:
        self.metrics.batch_windows.observe(windows)
        for _ in range(windows):  # every window of the batch waited for the whole forward pass
            self.metrics.inference_seconds.observe(seconds)

    def detect(self, detector: StreamingDetector, chunks: Iterable[np.ndarray], max_events: int,
               max_windows: int, denoise_us: int = 0) -> tuple[int, list[dict[str, Any]]]:
        """Every window of an event stream with a fresh state (blocking; run it through :meth:`call`).

        ``denoise_us`` > 0 runs the background-activity filter on the events first (as ``spquant predict
        --denoise-us``). Returns (number of events received, window dicts). Raises :class:`EventValidationError` for
        events off the sensor, unsorted or negative timestamps or a span of more than ``max_windows``,
        :class:`PayloadTooLargeError` for more than ``max_events`` events.
        """
        counter = _CheckedChunks(chunks, detector.letterbox.sensor_width, detector.letterbox.sensor_height,
                                 max_events, max_windows, detector.window_us)
        events: Iterable[np.ndarray] = counter
        if denoise_us:
            denoiser = BackgroundActivityFilter(counter.width, counter.height, denoise_us)
            events = (denoiser(chunk) for chunk in counter)
        windows = []
        for window, boxes in detector.run(iter_windows(events, detector.window_us)):
            windows.append(window_json(window.t_start, window.t_end, boxes, self.class_names))
        self.metrics.windows.labels(source="rest").inc(len(windows))
        return counter.events, windows

    def close(self) -> None:
        """Stop batching, the worker threads and the inference processes (after the running calls finish)."""
        self._batcher.close()
        self._executor.shutdown(wait=True, cancel_futures=True)
        for process in self._processes:
            process.close()


class _CheckedChunks:
    """Event chunks validated against the sensor and the request limits while they are consumed."""

    def __init__(self, chunks: Iterable[np.ndarray], width: int, height: int, max_events: int, max_windows: int,
                 window_us: int) -> None:
        self.chunks, self.width, self.height = chunks, width, height
        self.max_events, self.max_windows, self.window_us = max_events, max_windows, window_us
        self.events = 0
        self._first_window: int | None = None

    def __iter__(self) -> Iterator[np.ndarray]:
        for chunk in self.chunks:
            validate_events(chunk, self.width, self.height)
            if not len(chunk):
                continue
            self.events += len(chunk)
            if self.events > self.max_events:
                raise PayloadTooLargeError(f"more than {self.max_events} events in one request; split the recording "
                                    f"or stream it through /v1/stream")
            if self._first_window is None:
                self._first_window = int(chunk["t"][0]) // self.window_us
            check_span(self._first_window, int(chunk["t"][-1]), self.window_us, self.max_windows)
            yield chunk


def check_span(first_window: int, t_last: int, window_us: int, max_windows: int) -> None:
    """Refuse timestamps that would open more than ``max_windows`` windows from ``first_window`` on."""
    span = t_last // window_us - first_window + 1
    if span > max_windows:
        raise EventValidationError(
            f"timestamp jump: t={t_last} µs lies {span} windows of {window_us} µs after the first open window; at "
            f"most {max_windows} are accepted at once"
        )


def _describe(model: Any, path: Path) -> dict[str, Any]:
    cfg = model.config
    if isinstance(model, NumpyRuntime):  # its own figures, the same as footprint()'s on the torch runtime (tested)
        sizes, levels = model.footprint(), model.membrane_levels()
    else:  # a torch model: torch is loaded
        from models.compress.accounting import footprint
        from models.networks.quant import LevelGrid

        sizes = footprint(model)
        neuron = cfg.neuron()
        levels = LevelGrid(neuron.lb, neuron.ub, neuron.step).levels() if neuron.quantize_membrane else []
    return {
        "path": str(path),
        "runtime": runtime_name(model),
        "variant": cfg.variant,
        "scale": cfg.scale,
        "classes": list(cfg.class_names),
        "time_bins": cfg.bins,
        "window_us": cfg.window_us,
        "input_width": cfg.input_width,
        "input_height": cfg.input_height,
        "sensor_width": cfg.sensor_size[0],
        "sensor_height": cfg.sensor_size[1],
        "weight_bits": cfg.weight_bits,
        "first_layer_bits": cfg.first_layer_bits,
        "membrane_levels": levels,
        **{k: v for k, v in sizes.items() if k in _SIZE_KEYS},
    }
