"""Requests that arrive together share a forward pass: one thread owns the model, and each pass
takes images from every request waiting when the last one ended (up to a batch size), so a
second request waits for a pass, never fails because a first is running.

A pass takes the waiting requests' images in turns, one image from each request per turn (round
robin), not the requests first come first served: a request of many images goes through several
passes beside the requests that arrive after it, and a one-image request is in the next pass
however many images others sent before it.

No request waits for company: an idle model starts on the first request at once, so a lone
request is as fast as the Python API, and batches form only under load, where they pay off.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass(eq=False)
class _Job(Generic[Item, Result]):
    """One request's items (images); `taken` of them handed to passes so far."""

    items: list[Item]
    future: asyncio.Future[list[Result]]
    results: list[Result] = field(default_factory=list)
    taken: int = 0

    @property
    def left(self) -> int:
        return len(self.items) - self.taken


class Batcher(Generic[Item, Result]):
    """Runs `run(items) -> results` (one result per item, in order) on a single thread, over the
    items of the jobs waiting when the thread comes free, at most `batch_size` a pass, taken
    from the jobs in turn. Use inside a running event loop: `start()`, `submit()`, `stop()`."""

    def __init__(self, run: Callable[[Sequence[Item]], Sequence[Result]], batch_size: int) -> None:
        self._run, self._batch_size = run, batch_size
        self._waiting: deque[_Job[Item, Result]] = deque()  # the next pass starts at the left
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

    async def submit(self, items: Sequence[Item]) -> list[Result]:
        """The items' results, in order, once passes have run them all; the exception of a pass
        that ran any of them if it failed."""
        job: _Job[Item, Result] = _Job(list(items), asyncio.get_running_loop().create_future())
        if not job.items:
            return []
        self._waiting.append(job)
        self._arrived.set()
        return await job.future

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            while shares := self._take():
                items = [item for job, count in shares for item in job.items[job.taken - count:job.taken]]
                try:
                    results = await loop.run_in_executor(self._thread, self._run, items)
                except Exception as err:  # every job of the pass fails alike; the server goes on
                    for job, _ in shares:
                        self._drop(job)
                        _settle(job.future, error=err)
                else:
                    start = 0
                    for job, count in shares:
                        job.results.extend(results[start:start + count])
                        start += count
                        if len(job.results) == len(job.items):
                            _settle(job.future, result=job.results)
                self.passes += 1

    def _take(self) -> list[tuple[_Job[Item, Result], int]]:
        """Each waiting job's share of the next pass, one item per job in turn up to the batch
        size (a job whose requester has gone is dropped); the jobs served that still have items
        left go to the back of the queue, so the next pass starts with the others."""
        for job in [job for job in self._waiting if job.future.done()]:
            self._drop(job)
        counts = dict.fromkeys(self._waiting, 0)
        room = self._batch_size
        while room and any(counts[job] < job.left for job in counts):
            for job in counts:
                if room and counts[job] < job.left:
                    counts[job] += 1
                    room -= 1
        shares = [(job, count) for job, count in counts.items() if count]
        for job, count in shares:
            job.taken += count
            self._waiting.remove(job)
            if job.left:
                self._waiting.append(job)
        return shares

    def _drop(self, job: _Job[Item, Result]) -> None:
        if job in self._waiting:
            self._waiting.remove(job)


def _settle(future: asyncio.Future, *, result: object = None, error: BaseException | None = None) -> None:
    if future.done():  # the requester went away while its job ran
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
