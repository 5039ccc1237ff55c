"""Starting and stopping the server: the socket is bound before the model loads (a taken port
is an error at once, not after the wait), and accepts connections only once the model is
ready (through the guard, which counts and times them); SIGINT and SIGTERM stop it cleanly:
new connections are refused at once, the requests in flight are answered within
Limits.shutdown_grace seconds."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import signal
import socket
import sys
from collections.abc import Callable

from aiohttp import web

from captioner.errors import CaptionerError
from captioner.serve.guard import BACKLOG, GUARD

_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_SAY_AGAIN_S = 10.0  # an accept failing for want of resources is said at most this often


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (port 0: a free one), not yet accepting connections."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as err:
        raise CaptionerError(f"--host {host}: {err.strerror}") from None
    sock = socket.socket(family, kind, proto)
    # A server restarted at once finds its port in TIME_WAIT; on POSIX this does not let two
    # servers listen on one port.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        raise CaptionerError(f"cannot listen on {host}:{port}: {err.strerror}; choose another --port "
                             "(0: any free one)") from None
    return sock


def is_loopback(host: str) -> bool:
    """Whether `host` (as given to --host) is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url(sock: socket.socket) -> str:
    """Where a browser on this machine finds the page."""
    host, port = sock.getsockname()[:2]
    if host in ("0.0.0.0", "::"):
        host = "localhost"  # every interface, this machine's included
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def run(app: web.Application, sock: socket.socket, on_ready: Callable[[], None], *,
        access_log: bool = False) -> None:
    """Serve `app` on `sock` until SIGINT or SIGTERM; `on_ready` once connections are accepted."""
    if access_log:
        log = logging.getLogger("aiohttp.access")
        log.setLevel(logging.INFO)
        log.addHandler(logging.StreamHandler(sys.stderr))

    async def until_signalled() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except NotImplementedError:  # Windows: Ctrl-C arrives as KeyboardInterrupt instead
                pass
        await serve(app, sock, on_ready, stop, access_log=access_log)

    asyncio.run(until_signalled())


async def serve(app: web.Application, sock: socket.socket, on_ready: Callable[[], None],
                stop: asyncio.Event, *, access_log: bool = False) -> None:
    """Serve `app` on `sock` until `stop` is set, then finish the requests in flight."""
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_quiet_resource_errors())
    guard = app[GUARD]
    runner = web.AppRunner(app, access_log=logging.getLogger("aiohttp.access") if access_log else None,
                           shutdown_timeout=guard.limits.shutdown_grace)
    await runner.setup()
    assert runner.server is not None
    listening = await loop.create_server(guard.protocol_factory(runner.server), sock=sock, backlog=BACKLOG)
    try:
        on_ready()
        await stop.wait()
    finally:
        listening.close()  # new connections are refused from here on
        await guard.drained(guard.limits.shutdown_grace)
        await runner.cleanup()


def _quiet_resource_errors() -> Callable[[asyncio.AbstractEventLoop, dict], None]:
    """The loop's error handler: an accept that fails for want of files or memory (asyncio
    retries it a second later) is one line at most every few seconds, not a traceback each time."""
    last = [-_SAY_AGAIN_S]

    def handle(loop: asyncio.AbstractEventLoop, context: dict) -> None:
        err = context.get("exception")
        if isinstance(err, OSError) and err.errno in _OUT_OF_RESOURCES:
            if loop.time() - last[0] >= _SAY_AGAIN_S:
                last[0] = loop.time()
                print(f"warning: {context.get('message', 'accept failed')}: {err.strerror}; "
                      "connections wait meanwhile", file=sys.stderr, flush=True)
            return
        loop.default_exception_handler(context)
    return handle
