"""`captioner serve` for the tests, as a person starts it: a separate process on a free loopback
port (--port 0; the URL it prints on stdout says which), stopped with SIGTERM; and an HTTP
client for it (aiohttp's)."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from PIL import Image

from helpers import wait_until

LIMIT_MB = 1  # the test servers' upload limit, small so that a test can exceed it cheaply

@dataclass
class Served:
    url: str  # http://127.0.0.1:PORT/
    process: subprocess.Popen
    log: Path  # its stderr

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def running_server(checkpoint: Path, folder: Path, *args: str, open_files: int | None = None
                   ) -> Iterator[Served]:
    """A server on `checkpoint` until the block ends; its stderr in `folder`/serve.log;
    `open_files`: its limit on open file descriptors (RLIMIT_NOFILE)."""
    def limit() -> None:
        if open_files is not None:
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, hard))

    log = folder / "serve.log"
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "captioner", "serve", "--checkpoint", str(checkpoint), "--port", "0",
             "--device", "cpu", *args], stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=folder,
            env=os.environ.copy(), preexec_fn=limit)
    served = Served("", process, log)
    try:
        served.url = process.stdout.readline().strip()  # printed once the model is loaded
        assert served.url.startswith("http://127.0.0.1:"), served.stderr()[-3000:]
        yield served
    finally:
        stop(served)


def stop(served: Served) -> int:
    """SIGTERM, as a service manager stops it; the exit status."""
    if served.process.poll() is None:
        served.process.send_signal(signal.SIGTERM)
    try:
        return served.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        served.process.kill()
        raise


def seconds_until_stopped(served: Served, timeout: float = 30) -> float:
    """Seconds until the server says "stopped", its last line, polled from now (a failure after
    `timeout`): the server's own shutdown, without the interpreter's exit after it, which on a
    loaded machine takes seconds of its own (torch's teardown)."""
    start = time.monotonic()
    try:
        wait_until(lambda: served.stderr().rstrip().endswith("stopped"), timeout, 'the line "stopped"')
    except AssertionError as err:
        raise AssertionError(f"{err}; its log ends:\n{served.stderr()[-3000:]}") from None
    return time.monotonic() - start


def jpeg(seed: int, size: tuple[int, int] = (640, 480)) -> bytes:
    """A photo-sized JPEG: coloured blocks on noise, different for each seed."""
    rng = np.random.default_rng(seed)
    width, height = size
    pixels = rng.integers(0, 90, (height, width, 3), dtype=np.uint8)
    top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
    pixels[top:top + height // 2, left:left + width // 2] = rng.integers(0, 256, 3)
    out = BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return out.getvalue()


def form(files: list[tuple[str, bytes]], **fields: object) -> aiohttp.FormData:
    data = aiohttp.FormData(default_to_multipart=True)
    for name, value in fields.items():
        data.add_field(name, str(value))
    for name, content in files:
        data.add_field("image", content, filename=name, content_type="application/octet-stream")
    return data


async def call(session: aiohttp.ClientSession, method: str, url: str, **kwargs: Any) -> tuple[int, Any]:
    """Status and JSON answer of one request."""
    async with session.request(method, url, **kwargs) as response:
        return response.status, await response.json()


def request(method: str, url: str, **kwargs: Any) -> tuple[int, Any]:
    async def one() -> tuple[int, Any]:
        async with aiohttp.ClientSession() as session:
            return await call(session, method, url, **kwargs)
    return asyncio.run(one())


BOUNDARY = "captioner-test-boundary"


def multipart_body(parts: list[tuple[str, str | None, bytes]], *, preamble: bytes = b"") -> bytes:
    """A multipart/form-data body written byte by byte, as a hostile or an old client may send it:
    each part (field name, file name or None, content) with its Content-Disposition unescaped."""
    out = [preamble]
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + ("" if filename is None else f'; filename="{filename}"')
        out.append(f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n")
    out.append(f"--{BOUNDARY}--\r\n".encode())
    return b"".join(out)


def address(url: str) -> tuple[str, int]:
    host, port = url.split("//", 1)[1].rstrip("/").rsplit(":", 1)
    return host, int(port)


def request_head(url: str, length: int | None, *headers: str, path: str = "/caption") -> bytes:
    """The start of a POST of a multipart body (BOUNDARY) of `length` bytes (None: chunked)."""
    host, port = address(url)
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}",
             f"Content-Type: multipart/form-data; boundary={BOUNDARY}", framing, *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_answer(sock: socket.socket) -> tuple[int, Any]:
    """Status and JSON of the one answer on a raw socket that the server then closes or ends."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = [int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:")]
        if length and len(body) >= length[0]:
            break
    head, _, body = data.partition(b"\r\n\r\n")
    assert head, "the server closed the connection without an answer"
    return int(head.split()[1]), json.loads(body) if body else None


def post_raw(url: str, body: bytes, *headers: str, chunked: bool = False, timeout: float = 30
             ) -> tuple[int, Any]:
    """Status and JSON answer of a POST /caption of a raw multipart body; `chunked`: sent in
    chunks of 64 KiB without declaring its length."""
    with socket.create_connection(address(url), timeout=timeout) as sock:
        sock.sendall(request_head(url, None if chunked else len(body), *headers, "Connection: close"))
        if not chunked:
            sock.sendall(body)
            return read_answer(sock)
        try:
            for start in range(0, len(body), 2**16):
                piece = body[start:start + 2**16]
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            sock.sendall(b"0\r\n\r\n")
        except OSError:  # the server answered and closed before the end
            pass
        return read_answer(sock)


def rss_mb(pid: int) -> float:
    """A process's resident memory now, in MB."""
    with open(f"/proc/{pid}/status") as status:
        kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return kb / 1024


@contextmanager
def serving_in_process(captioner: Any, limits: Any) -> Iterator[str]:
    """The server's application and loop in a thread of this process, with `limits` (timeouts
    and caps too small for a command line); yields its URL."""
    from captioner.serve.app import build_app
    from captioner.serve.server import listen, serve, url

    sock = listen("127.0.0.1", 0)
    app = build_app(captioner, limits, checkpoint="in-process", local_only=True)
    ready, control = threading.Event(), []

    async def main() -> None:
        stop = asyncio.Event()
        control.append((asyncio.get_running_loop(), stop))
        await serve(app, sock, ready.set, stop)

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(60), "the in-process server did not start"
    try:
        yield url(sock)
    finally:
        loop, stop = control[0]
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        sock.close()
