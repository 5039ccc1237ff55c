"""`captioner serve` under hostile clients, over loopback only: is a well-behaved client still
answered, and does the server's memory come back?

A server process is started here (`captioner serve --port 0`). Its idle latency is the median of
a one-image request (a 640x480 JPEG) sent alone; then, one scenario at a time, a hostile client
runs for --seconds while a well-behaved one sends that request every 0.25 s:
  slow clients    600 connections, each sending its headers and half a 200 KB body, then stalling
  decode flood    6 requests at once, each of three 9000 x 9000 black PNGs (80 KB each, 243 Mpx
                  a request, under the per-request limit), sent again as each is answered
  empty parts     4 clients posting 1.2 MB of empty multipart parts, chunked, again and again
  50 concurrent   50 one-image requests at once, again as they are answered
For each it prints the well-behaved client's worst latency, the server's peak RSS, and its RSS
10 s after the hostile client stopped. Targets: worst latency within 2 s of the idle latency;
RSS 10 s after within 20% of the idle RSS.

    python benchmarks/serve_stress.py --checkpoint runs/shapes/checkpoints/best.ckpt [--seconds 4]

(with the package and its serve extra installed, or PYTHONPATH=. from a source checkout)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from io import BytesIO
from pathlib import Path

import aiohttp
import numpy as np
from machine import describe  # benchmarks/ is on sys.path as a script
from PIL import Image

BOUNDARY = "stress-boundary"


def start_server(checkpoint: Path) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "captioner", "serve", "--checkpoint", str(checkpoint), "--port", "0",
         "--device", "cpu", "-q"], stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    url = process.stdout.readline().strip()
    if not url.startswith("http://127.0.0.1:"):
        sys.exit("captioner serve did not start on loopback")
    return process, url


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def photo() -> bytes:
    rng = np.random.default_rng(0)
    out = BytesIO()
    Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(out, format="JPEG", quality=90)
    return out.getvalue()


def black_png() -> bytes:
    out = BytesIO()
    Image.new("L", (9000, 9000)).save(out, format="PNG")
    return out.getvalue()


def form(files: list[bytes]) -> aiohttp.FormData:
    data = aiohttp.FormData()
    for n, content in enumerate(files):
        data.add_field("image", content, filename=f"{n}.png")
    return data


async def post(session: aiohttp.ClientSession, url: str, files: list[bytes]) -> int:
    async with session.post(url + "caption", data=form(files)) as response:
        await response.read()
        return response.status


def head(url: str, length: int | None) -> bytes:
    host = url.split("//", 1)[1].rstrip("/")
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (f"POST /caption HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; "
            f"boundary={BOUNDARY}\r\n{framing}\r\n\r\n").encode()


async def slow_clients(url: str, stop: asyncio.Event) -> None:
    host, port = url.split("//", 1)[1].rstrip("/").rsplit(":", 1)
    disposition = 'Content-Disposition: form-data; name="image"; filename="a.jpg"'
    body = f"--{BOUNDARY}\r\n{disposition}\r\n\r\n".encode() + b"\xff" * 200_000
    writers = []
    try:
        for _ in range(600):
            try:
                _, writer = await asyncio.open_connection(host, int(port))
                writer.write(head(url, len(body) + 100) + body[: len(body) // 2])
                writers.append(writer)
            except OSError:
                await asyncio.sleep(0.01)
            if stop.is_set():
                break
        await stop.wait()
    finally:
        for writer in writers:
            writer.close()


async def again(stop: asyncio.Event, clients: int, one: Callable[[], Awaitable[object]]) -> None:
    async def client() -> None:
        while not stop.is_set():
            try:
                await one()
            except (aiohttp.ClientError, OSError):
                await asyncio.sleep(0.05)
    await asyncio.gather(*(client() for _ in range(clients)))


async def empty_parts(url: str) -> None:
    host, port = url.split("//", 1)[1].rstrip("/").rsplit(":", 1)
    part = f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n\r\n".encode()
    chunk = part * 1000
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head(url, None))
        for _ in range(1_200_000 // len(chunk) + 1):
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await reader.read(65536)
    finally:
        writer.close()


async def scenario(name: str, url: str, pid: int, seconds: float, image: bytes,
                   hostile: Callable[[asyncio.Event], Awaitable[None]]) -> dict[str, float | str]:
    stop = asyncio.Event()
    peak = rss_mb(pid)
    latencies: list[float] = []
    failures = 0
    task = asyncio.ensure_future(hostile(stop))
    async with aiohttp.ClientSession() as session:
        await asyncio.sleep(0.5)  # the hostile client under way
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            start = time.monotonic()
            probe = asyncio.ensure_future(post(session, url, [image]))
            while not probe.done():
                peak = max(peak, rss_mb(pid))
                await asyncio.sleep(0.05)
            latencies.append(time.monotonic() - start)
            failures += probe.result() != 200
            peak = max(peak, rss_mb(pid))
            await asyncio.sleep(0.25)
    stop.set()
    await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 60)
    await asyncio.sleep(10)
    return {"scenario": name, "probes": len(latencies), "failed": failures, "worst_s": max(latencies),
            "peak_mb": peak, "after_mb": rss_mb(pid)}


async def main_async(args: argparse.Namespace) -> None:
    image, png = photo(), black_png()
    process, url = start_server(args.checkpoint)
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(3):
                await post(session, url, [image])  # warm
            idle = []
            for _ in range(7):
                start = time.monotonic()
                await post(session, url, [image])
                idle.append(time.monotonic() - start)
            idle_s = statistics.median(idle)
            idle_mb = rss_mb(process.pid)
            print(f"idle: one-image latency {idle_s * 1000:.0f} ms (median of 7), RSS {idle_mb:.0f} MB")

            hostiles: dict[str, Callable[[asyncio.Event], Awaitable[None]]] = {
                "slow clients": lambda stop: slow_clients(url, stop),
                "decode flood": lambda stop: again(stop, 6, lambda: post(session, url, [png] * 3)),
                "empty parts": lambda stop: again(stop, 4, lambda: empty_parts(url)),
                "50 concurrent": lambda stop: again(stop, 50, lambda: post(session, url, [image])),
            }
            print(f"{'scenario':<14} {'probes':>6} {'failed':>6} {'worst':>8} {'+idle':>7} "
                  f"{'peak RSS':>9} {'RSS +10 s':>9} {'vs idle':>7}")
            for name, hostile in hostiles.items():
                row = await scenario(name, url, process.pid, args.seconds, image, hostile)
                print(f"{name:<14} {row['probes']:>6} {row['failed']:>6} {row['worst_s']:>7.2f}s "
                      f"{row['worst_s'] - idle_s:>+6.2f}s {row['peak_mb']:>7.0f}MB {row['after_mb']:>7.0f}MB "
                      f"{row['after_mb'] / idle_mb - 1:>+6.0%}", flush=True)
    finally:
        process.terminate()
        process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=4.0, help="how long each hostile client runs")
    args = parser.parse_args()
    print(describe())
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
