"""Dynamic batching: windows of concurrent streams run as one forward pass.

Each stream session awaits :meth:`WindowBatcher.step` for its windows one after another (its state carries), so a
batch never holds two windows of one stream. A worker takes the oldest waiting window plus every other window
waiting at that moment (up to ``max_batch``) and runs them through :func:`models.inference.stream.step_batch` on an
inference thread, or hands them to that worker's runner (an inference process, see :mod:`service.workers`). Inference
threads share one queue; a worker with a runner has a queue of its own, since its process holds the states of the
streams it runs. There is no timer: a lone stream is never held back, and under load the next batch fills while the
current one runs. """

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any

import numpy as np

from models.inference.stream import SpikeMeter, WindowJob, step_batch

Result = tuple[np.ndarray, Any, float]  # boxes, new state, the window's firing rate


Runner = Callable[[list[WindowJob]], list[Result | Exception]]


class WindowBatcher:
    """Queues + ``workers`` batching loops on the engine's event loop; the forward passes run on ``executor``, through
    :func:`run_isolated` (the workers share one queue) or, given ``runners`` (one per worker), through that worker's
    own runner (each worker has its own queue: :meth:`step` names the worker).

    ``on_batch(windows, seconds)`` is called after every forward pass (metrics).
    """

    def __init__(self, executor: Executor, workers: int, max_batch: int,
                 on_batch: Callable[[int, float], None] | None = None, runners: Sequence[Runner] | None = None) -> None:
        if workers < 1 or max_batch < 1:
            raise ValueError(f"workers and max_batch must be positive, got {workers} and {max_batch}")
        if runners is not None and len(runners) != workers:
            raise ValueError(f"{len(runners)} runners for {workers} workers")
        self._executor, self._workers, self.max_batch = executor, workers, max_batch
        self._runners: Sequence[Runner] = runners or [run_isolated] * workers
        self._own_queues = runners is not None
        self._on_batch = on_batch
        self._queues: list[asyncio.Queue[tuple[WindowJob, asyncio.Future[Result]]]] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def step(self, job: WindowJob, worker: int = 0) -> Result:
        """``(boxes, new state, firing rate)`` of one window, computed in a batch with whatever else is waiting (for
        worker ``worker``, where the workers have runners)."""
        loop = asyncio.get_running_loop()
        if not self._queues:  # started lazily: the queues and workers belong to the loop that serves requests
            self._queues = [asyncio.Queue() for _ in range(self._workers if self._own_queues else 1)]
            self._tasks = [loop.create_task(self._work(runner, self._queues[i % len(self._queues)]),
                                            name=f"spquant-batcher-{i}") for i, runner in enumerate(self._runners)]
        future: asyncio.Future[Result] = loop.create_future()
        self._queues[worker % len(self._queues)].put_nowait((job, future))
        return await future

    def close(self) -> None:
        """Stop the batching loops (windows still queued are cancelled)."""
        for task in self._tasks:
            task.cancel()
        for queue in self._queues:
            while not queue.empty():
                queue.get_nowait()[1].cancel()
        self._tasks, self._queues = [], []

    async def _work(self, runner: Runner, queue: asyncio.Queue[tuple[WindowJob, asyncio.Future[Result]]]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            while len(batch) < self.max_batch and not queue.empty():
                batch.append(queue.get_nowait())
            live = [(job, future) for job, future in batch if not future.done()]  # a closed session cancelled its own
            if not live:
                continue
            start = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, runner, [job for job, _ in live])
            except Exception as exc:  # the runner itself failed (an inference process died): the batch fails
                results = [exc] * len(live)
            if self._on_batch is not None:
                self._on_batch(len(live), time.perf_counter() - start)
            for (_, future), result in zip(live, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)


def run_isolated(jobs: list[WindowJob]) -> list[Result | Exception]:
    """:func:`step_batch`, falling back to one job at a time when the batch fails, so that a job that cannot run
    fails alone (its exception in its place) and the others still get their results."""
    try:
        meter = SpikeMeter()
        results = step_batch(jobs, meter)
        return [(boxes, state, rate) for (boxes, state), rate in zip(results, meter.rates(), strict=True)]
    except Exception as exc:
        if len(jobs) == 1:
            return [exc]
    results: list[Result | Exception] = []
    for job in jobs:
        results.extend(run_isolated([job]))
    return results
