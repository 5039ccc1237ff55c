"""`captioner serve` for the tests, as a person starts it: a separate process on a free loopback
port (--port 0; the URL it prints on stdout says which), stopped with SIGTERM; and an HTTP
client for it (aiohttp's)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from PIL import Image


@dataclass
class Served:
    url: str  # http://127.0.0.1:PORT/
    process: subprocess.Popen
    log: Path  # its stderr

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def running_server(checkpoint: Path, folder: Path, *args: str) -> Iterator[Served]:
    """A server on `checkpoint` until the block ends; its stderr in `folder`/serve.log."""
    log = folder / "serve.log"
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "captioner", "serve", "--checkpoint", str(checkpoint), "--port", "0",
             "--device", "cpu", *args], stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=folder,
            env=os.environ.copy())
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
