"""Starting and stopping the server: the socket is bound before the model loads (a taken port
is an error at once, not after the wait), and accepts connections only once the model is
ready; SIGINT and SIGTERM stop it cleanly."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
import socket
import sys
from collections.abc import Callable

from aiohttp import web

from captioner.errors import CaptionerError


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
    asyncio.run(_serve(app, sock, on_ready, access_log))


async def _serve(app: web.Application, sock: socket.socket, on_ready: Callable[[], None],
                 access_log: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except NotImplementedError:  # Windows: Ctrl-C arrives as KeyboardInterrupt instead
            pass
    runner = web.AppRunner(app, access_log=logging.getLogger("aiohttp.access") if access_log else None)
    await runner.setup()
    try:
        await web.SockSite(runner, sock, shutdown_timeout=5.0).start()
        on_ready()
        await stop.wait()
    finally:
        await runner.cleanup()
