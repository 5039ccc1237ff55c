"""Holding every client to its share of connections, time and memory.

aiohttp's server has no timeout for a request's headers or body and no cap on connections (its
documentation leaves both to a proxy in front, which a local server does not have), so:
- a thin protocol in front of aiohttp's counts connections; at the cap, the oldest one still
  sending its request is closed (a well-behaved client sends its request at once and then
  waits for the answer, so it is never the one closed), and the cap is kept under the
  process's limit on open files, so accepting never fails for want of one;
- a connection that has not sent a request's headers `header_timeout` after it opened (or after
  its last answer) is closed; the body's deadline is uploads.py's;
- once a request is refused for its body (too large, too many parts, too slow), the rest of that
  body is dropped as it arrives, unparsed: aiohttp would read it to the end before closing (to
  let the client read the refusal), parsing every chunk, and a client sending megabytes of
  parts again and again kept the event loop busy with nothing else;
- the bodies held in memory share one budget across requests;
- once no request is in flight, freed memory is handed back to the system (glibc keeps it
  otherwise, and a burst of large images would leave the process gigabytes larger).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import resource
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import StreamReader, web

from captioner.serve.options import Limits, RequestError

BACKLOG = 32  # connections the kernel queues, and asyncio accepts at once before counting them
_SPARE_FILES = 32 + BACKLOG  # for the model's files and logs, and the accepts in flight
_TRIM_AFTER_S = 0.5  # idle this long, memory is handed back


@dataclass
class _Connection:
    transport: asyncio.Transport
    busy: bool = False  # its request is read and being answered: never closed to make room
    timer: asyncio.TimerHandle | None = None
    discarding: bool = False  # its request was refused for its body: what else comes is dropped
    refused_body: StreamReader | None = None  # that body, ended when the client hangs up


class Guard:
    """The connections, the requests in flight and the bytes their bodies hold."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.cap = connection_cap(limits.max_connections)
        self._open: dict[asyncio.BaseTransport, _Connection] = {}  # oldest first
        self.buffered = 0
        self._in_flight = 0
        self._trim: asyncio.TimerHandle | None = None
        self._drained = asyncio.Event()
        self._drained.set()

    def protocol_factory(self, make: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """aiohttp's protocol factory, each connection counted and timed."""
        return lambda: _Counted(self, make())

    # -- connections -------------------------------------------------------------------------------
    def opened(self, transport: asyncio.Transport) -> _Connection | None:
        if len(self._open) >= self.cap:
            oldest = next((c for c in self._open.values() if not c.busy), None)
            if oldest is None:  # every connection is being answered: the newcomer waits its turn
                transport.abort()
                return None
            self.closed(oldest.transport)
            oldest.transport.abort()
        connection = self._open[transport] = _Connection(transport)
        self._await_request(connection)
        return connection

    def closed(self, transport: asyncio.BaseTransport) -> None:
        connection = self._open.pop(transport, None)
        if connection is not None and connection.timer is not None:
            connection.timer.cancel()

    def _await_request(self, connection: _Connection) -> None:
        loop = asyncio.get_running_loop()
        connection.busy = False
        connection.timer = loop.call_later(self.limits.header_timeout, connection.transport.abort)

    # -- requests (the application's middleware and uploads.py) --------------------------------------
    def request_started(self, request: web.Request) -> None:
        self._in_flight += 1
        self._drained.clear()
        if self._trim is not None:
            self._trim.cancel()
        connection = self._open.get(request.transport) if request.transport else None
        if connection is not None and connection.timer is not None:
            connection.timer.cancel()
            connection.timer = None

    def body_read(self, request: web.Request) -> None:
        """The request is all in: its connection is no longer one to close for room."""
        connection = self._open.get(request.transport) if request.transport else None
        if connection is not None:
            connection.busy = True

    def body_refused(self, request: web.Request) -> None:
        """The request is refused for its body, and its connection closed after the answer: the
        rest of the body is not worth parsing."""
        connection = self._open.get(request.transport) if request.transport else None
        if connection is not None:
            connection.discarding, connection.refused_body = True, request.content

    def request_done(self, request: web.Request) -> None:
        self._in_flight -= 1
        connection = self._open.get(request.transport) if request.transport else None
        if connection is not None:
            self._await_request(connection)  # keep-alive: the next request's headers in time
        if self._in_flight == 0:
            self._drained.set()
            self._trim = asyncio.get_running_loop().call_later(_TRIM_AFTER_S, _trim_soon)

    async def drained(self, timeout: float) -> None:
        """Once no request is in flight, or after `timeout` seconds. (aiohttp's own shutdown
        stops reading at once, so a request whose body was still arriving would never end.)"""
        try:
            await asyncio.wait_for(self._drained.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    def holding(self) -> Held:
        """What one request's body holds in memory, released when the block ends."""
        return Held(self)


class Held:
    """Bytes of one request's body in memory, counted against the guard's budget."""

    def __init__(self, guard: Guard) -> None:
        self._guard, self.size = guard, 0

    def add(self, size: int) -> None:
        """Count `size` more bytes, or refuse the request (503) if all bodies would hold too many."""
        if self._guard.buffered + size > self._guard.limits.max_buffered_bytes:
            raise RequestError(503, "the server holds as many uploads as it may; try again in a few seconds")
        self._guard.buffered += size
        self.size += size

    def __enter__(self) -> Held:
        return self

    def __exit__(self, *_: object) -> None:
        self._guard.buffered -= self.size
        self.size = 0


GUARD = web.AppKey("guard", Guard)


class _Counted(asyncio.Protocol):
    """aiohttp's protocol for one connection, with the guard told when it opens and closes."""

    def __init__(self, guard: Guard, inner: asyncio.Protocol) -> None:
        self._guard, self._inner = guard, inner
        self._transport: asyncio.BaseTransport | None = None
        self._connection: _Connection | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._inner.connection_made(transport)
        self._connection = self._guard.opened(transport)  # type: ignore[arg-type]

    def connection_lost(self, exc: Exception | None) -> None:
        self._guard.closed(self._transport)  # type: ignore[arg-type]
        if self._connection is not None and self._connection.refused_body is not None:
            # aiohttp waits for the end of a refused body (up to 10 s) before it lets go; the
            # client has gone, and the rest was dropped, so that end is now.
            self._connection.refused_body.feed_eof()
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._connection is None or not self._connection.discarding:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


def connection_cap(wanted: int) -> int:
    """`wanted`, or fewer where the process may not open that many more files."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        in_use = soft // 2
    return max(1, min(wanted, soft - in_use - _SPARE_FILES))


def _trim_soon() -> None:
    asyncio.get_running_loop().run_in_executor(None, release_memory)


_LIBC = ctypes.CDLL(ctypes.util.find_library("c")) if ctypes.util.find_library("c") else None


def release_memory() -> None:
    """Hand the heap's free pages back to the system (glibc's malloc_trim; elsewhere nothing)."""
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)
