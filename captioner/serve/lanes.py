"""Decoding uploads within a budget, fairly between requests.

Decoding runs on a few threads of its own (never the default pool, whose many threads let a
handful of large images take every core and gigabytes at once), in two lanes: images of more
than LARGE_PIXELS decoded pixels go one at a time through the large lane; the others through
the small lane's two threads, so a one-image request never waits behind a large image. Each
lane takes the waiting requests in turn, one image each (round robin), so a request of 64
images holds a lane no longer than one image at a time while others wait. At most one large
image and two small ones are decoded at once: the pixels in flight are bounded, whatever
arrives. A request's images together may hold at most Limits.max_request_pixels, counted from
their headers before any is decoded.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch import Tensor

from captioner.model.inference import Captioner
from captioner.serve.captioning import Opened, Upload, decode, open_upload
from captioner.serve.options import Limits, RequestError

LARGE_PIXELS = 16_000_000  # 4000 x 4000: decoded alone, about 50 MB as RGB


class Lane:
    """Runs calls on `threads` threads of its own, taking the waiting owners in turn."""

    def __init__(self, name: str, threads: int) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix=f"captioner-decode-{name}")
        self._free = threads
        self._waiting: OrderedDict[object, deque[tuple[Callable[[], Any], asyncio.Future]]] = OrderedDict()

    async def run(self, owner: object, call: Callable[[], Any]) -> Any:
        future = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(owner, deque()).append((call, future))
        self._dispatch()
        return await future

    def _dispatch(self) -> None:
        while self._free and self._waiting:
            owner, queue = next(iter(self._waiting.items()))
            call, future = queue.popleft()
            del self._waiting[owner]
            if queue:
                self._waiting[owner] = queue  # to the back: the next owner goes first
            if future.done():  # its request has gone
                continue
            self._free -= 1
            running = asyncio.get_running_loop().run_in_executor(self._pool, call)
            running.add_done_callback(lambda done, future=future: self._finished(done, future))

    def _finished(self, done: asyncio.Future, future: asyncio.Future) -> None:
        self._free += 1
        if not future.done():
            if done.exception() is not None:
                future.set_exception(done.exception())
            else:
                future.set_result(done.result())
        self._dispatch()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class Decoder:
    """A request's uploads as the network's input [N, 3, H, W], decoded in the lanes."""

    def __init__(self, captioner: Captioner, limits: Limits) -> None:
        self.captioner, self.limits = captioner, limits
        self._small, self._large = Lane("small", 2), Lane("large", 1)

    async def decode(self, uploads: list[Upload]) -> Tensor:
        opened = [open_upload(upload, self.limits.max_pixels) for upload in uploads]
        pixels = sum(one.pixels for one in opened)
        if pixels > self.limits.max_request_pixels:
            raise RequestError(413, f"the images hold {pixels:,} pixels together, over the "
                                    f"{self.limits.max_request_pixels:,}-pixel limit of one request; "
                                    "send them in several")
        owner = object()
        jobs = [asyncio.ensure_future(self._lane(one).run(owner, lambda one=one: decode(self.captioner, one)))
                for one in opened]
        try:
            return torch.stack(await asyncio.gather(*jobs))
        finally:
            for job in jobs:
                job.cancel()  # after a failure (a broken image), the others need not be decoded

    def _lane(self, opened: Opened) -> Lane:
        return self._large if opened.pixels > LARGE_PIXELS else self._small

    def close(self) -> None:
        self._small.close()
        self._large.close()
