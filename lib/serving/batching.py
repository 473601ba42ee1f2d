"""Micro-batching: concurrent requests for one variant share one predict call in a worker thread
(one predict_proba for many rows costs about as much as for one)."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from lib.serving.predictor import Predictor
from lib.serving.rows import Row

logger = logging.getLogger(__name__)

STOP_TASK_SECONDS = 10.0  # a background task still running this long after its cancel is left


@dataclass
class Variant:
    """One loaded model version serving under a name (champion or canary)."""

    name: str
    version: str
    predictor: Predictor


@dataclass
class _Job:
    variant: Variant
    rows: list[Row]
    future: asyncio.Future


class MicroBatcher:
    """Gathers concurrent requests for one variant into one predict call in a worker thread.

    The first job never waits; with several queued, it waits up to `wait_s` for `max_rows`, but
    only while a request in the service (`enter`/`leave`) is not queued yet. A failing batch is
    retried job by job, so one bad job fails alone."""

    def __init__(self, max_rows: int = 64, wait_s: float = 0.002, on_batch: Any = None) -> None:
        self.max_rows = max(1, int(max_rows))
        self.wait_s = max(0.0, float(wait_s))
        self.on_batch = on_batch  # called with the row count of every predict call
        self._jobs: deque[_Job] = deque()
        self._queued_rows = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor = _predict_executor()
        self.active = 0  # requests inside the service (entered, not yet answered)

    def enter(self) -> None:
        """A request came in: it may join the batch being gathered."""
        self.active += 1

    def leave(self) -> None:
        """A request was answered: the gathering may be complete now."""
        self.active -= 1
        if self._wake is not None:
            self._wake.set()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is not None and not self._task.done() and self._loop is loop:
            return
        self._loop = loop
        self._wake = asyncio.Event()
        self._task = loop.create_task(self._run(), name="micro-batcher")

    async def predict(self, variant: Variant, rows: list[Row]) -> tuple[list[float], list[Any]]:
        """Probabilities of class 1 and labels for `rows`, predicted with other waiting rows."""
        self.start()
        future = asyncio.get_running_loop().create_future()
        self._jobs.append(_Job(variant, rows, future))
        self._queued_rows += len(rows)
        self._wake.set()
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not self._jobs:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                if len(self._jobs) > 1 and self.wait_s > 0 and self._queued_rows < self.max_rows:
                    deadline = loop.time() + self.wait_s
                    while self._queued_rows < self.max_rows and len(self._jobs) < self.active:
                        remaining = deadline - loop.time()
                        if remaining <= 0:
                            break
                        self._wake.clear()
                        try:  # (not wait_for: Python 3.11's drops a cancellation that races
                            # the wake-up, and stop() would then wait for ever)
                            async with asyncio.timeout(remaining):
                                await self._wake.wait()
                        except TimeoutError:
                            break
                batch = self._take()
                if batch:
                    await self._predict_batch(batch)
        except asyncio.CancelledError:
            self._fail_all(RuntimeError("the service is shutting down"))
            raise

    def _take(self) -> list[_Job]:
        """The first live job and, in order, later live jobs of the same variant."""
        batch: list[_Job] = []
        keep: deque[_Job] = deque()
        rows = 0
        while self._jobs:
            job = self._jobs.popleft()
            self._queued_rows -= len(job.rows)
            if job.future.done():  # the client went away
                continue
            if not batch or (
                job.variant is batch[0].variant and rows + len(job.rows) <= self.max_rows
            ):
                batch.append(job)
                rows += len(job.rows)
                if rows >= self.max_rows:
                    break
            else:
                keep.append(job)
                self._queued_rows += len(job.rows)
        while keep:
            self._jobs.appendleft(keep.pop())
        return batch

    async def _predict_batch(self, batch: list[_Job]) -> None:
        loop = asyncio.get_running_loop()
        predictor = batch[0].variant.predictor
        rows = batch[0].rows if len(batch) == 1 else [r for job in batch for r in job.rows]
        if self.on_batch is not None:
            self.on_batch(len(rows))
        try:
            proba, labels = await loop.run_in_executor(self._executor, predictor.predict, rows)
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0].future, exc=exc)
                return
            for job in batch:  # isolate the job(s) that fail
                try:
                    p, lab = await loop.run_in_executor(self._executor, predictor.predict, job.rows)
                except Exception as single_exc:
                    _settle(job.future, exc=single_exc)
                else:
                    _settle(job.future, result=(p.tolist(), lab.tolist()))
            return
        proba_list, label_list = proba.tolist(), labels.tolist()
        start = 0
        for job in batch:
            end = start + len(job.rows)
            _settle(job.future, result=(proba_list[start:end], label_list[start:end]))
            start = end

    def _fail_all(self, exc: BaseException) -> None:
        while self._jobs:
            _settle(self._jobs.popleft().future, exc=exc)
        self._queued_rows = 0

    async def stop(self) -> None:
        if self._task is not None:
            await stop_task(self._task, "micro-batcher")
        self._fail_all(RuntimeError("the service is shutting down"))
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown, True)
        self._executor = _predict_executor()


async def stop_task(task: asyncio.Task, what: str, bound: float = STOP_TASK_SECONDS) -> None:
    """Cancel `task` and wait until it ends, cancelling again while it runs on: a cancellation
    swallowed once (asyncio.wait_for in Python 3.11 does that when its future completes in the
    same turn) must not hold the service's shutdown for ever. After `bound` seconds it is left
    behind, and logged; its error, if any, is logged too."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound
    while not task.done():
        remaining = deadline - loop.time()
        if remaining <= 0:
            logger.error("%s did not stop within %.0f s: left behind", what, bound)
            return
        task.cancel()
        await asyncio.wait({task}, timeout=min(remaining, 1.0))
    if not task.cancelled() and task.exception() is not None:
        logger.error("%s had failed: %r", what, task.exception())


def one_openmp_thread() -> None:
    """Predict-thread initializer: like n_jobs=1, one OpenMP thread (e.g. gradient boosting);
    per calling thread, so the rest of the process is not affected."""
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=1, user_api="openmp")
    except Exception:  # threadpoolctl comes with scikit-learn; without it, keep the default
        logger.debug("could not limit OpenMP threads in the predict thread")


def _predict_executor() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(
        max_workers=1, thread_name_prefix="predict", initializer=one_openmp_thread
    )


def _settle(future: asyncio.Future, result: Any = None, exc: BaseException | None = None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
