"""Requests that arrive together share a forward pass: one thread owns the model, and each pass
takes every job that came in while the last one ran (up to a batch size), so a second request
waits for a pass, never fails because a first is running.

No request waits for company: an idle model starts on the first job at once, so a lone request
is as fast as the Python API, and batches form only under load, where they pay off.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

Payload = TypeVar("Payload")
Result = TypeVar("Result")


@dataclass
class _Job(Generic[Payload, Result]):
    payload: Payload
    size: int  # images, counted against the batch size
    future: asyncio.Future[Result]


class Batcher(Generic[Payload, Result]):
    """Runs `run(payloads) -> results` (one result per payload, in order) on a single thread,
    over every job waiting when the thread comes free, at most `batch_size` images a pass (a
    larger job runs alone). Use inside a running event loop: `start()`, `submit()`, `stop()`."""

    def __init__(self, run: Callable[[Sequence[Payload]], Sequence[Result]], batch_size: int) -> None:
        self._run, self._batch_size = run, batch_size
        self._waiting: deque[_Job[Payload, Result]] = deque()
        self._arrived = asyncio.Event()
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="captioner-model")
        self._task: asyncio.Task[None] | None = None
        self.passes = 0  # forward passes run, for the health page and the tests

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._serve())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._thread.shutdown(wait=False, cancel_futures=True)

    async def submit(self, payload: Payload, size: int = 1) -> Result:
        """The payload's result, once a pass has run it; the pass's exception if it failed."""
        job = _Job(payload, size, asyncio.get_running_loop().create_future())
        self._waiting.append(job)
        self._arrived.set()
        return await job.future

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            while batch := self._take():
                try:
                    results = await loop.run_in_executor(self._thread, self._run,
                                                         [job.payload for job in batch])
                except Exception as err:  # every job of the pass fails alike; the server goes on
                    for job in batch:
                        _settle(job.future, error=err)
                else:
                    for job, result in zip(batch, results):
                        _settle(job.future, result=result)
                self.passes += 1

    def _take(self) -> list[_Job[Payload, Result]]:
        """The waiting jobs, oldest first, up to the batch size (a job whose requester has
        gone is dropped)."""
        batch: list[_Job[Payload, Result]] = []
        size = 0
        while self._waiting:
            job = self._waiting[0]
            if not job.future.done() and batch and size + job.size > self._batch_size:
                break
            self._waiting.popleft()
            if not job.future.done():
                batch.append(job)
                size += job.size
        return batch


def _settle(future: asyncio.Future, *, result: object = None, error: BaseException | None = None) -> None:
    if future.done():  # the requester went away while its job ran
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
