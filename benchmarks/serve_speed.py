"""What `captioner serve` costs over the Python API, and what batching concurrent requests gains.

Side by side on the same machine, a server process started here (`captioner serve --port 0`):
  1. one 640x480 JPEG: Captioner.caption(path) in this process against POST /caption of the
     same file (read, uploaded, decoded, captioned, answered as JSON), alternating, medians of
     --repeats; target: the server within 1.2x of the API.
  2. --requests single-image requests: one after another (each waits for the previous answer)
     against all at once (the server batches what arrives while a pass runs), alternating,
     medians; target: all at once at least 3x faster. The forward passes the server ran for
     each are printed too, and what bounds the gain: the model alone (CNN, then beam search)
     on one preprocessed image and on all of them, in this process.
The images are --images' first files (e.g. the shapes test scenes) resized to 640x480 JPEGs.

OpenMP's threads wait passively here (OMP_WAIT_POLICY=PASSIVE, unless the environment says
otherwise), in this process and the server: by default libgomp's threads spin at each barrier
for a while, and on a machine shared with other jobs a descheduled thread makes its team spin
for most of a time slice. A process whose only OpenMP team is the main thread's (a script using
the Python API) spins long; one with teams on several threads (the server) spins briefly. The
spin would be what is compared, not the server's overhead.

    python benchmarks/serve_speed.py --checkpoint runs/shapes/checkpoints/best.ckpt \\
        --images ~/.cache/captioner/shapes/<hash>/images/test [--repeats 15] [--requests 32]

(with the package and its serve extra installed, or PYTHONPATH=. from a source checkout)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
from machine import describe  # benchmarks/ is on sys.path as a script
from PIL import Image

from captioner.data.images import list_images

if TYPE_CHECKING:
    from captioner.model.inference import Captioner


def photos(folder: Path, count: int, out: Path) -> list[Path]:
    """The folder's first `count` images as 640x480 JPEGs in `out`."""
    images = list_images(folder).images[:count]
    if len(images) < count:
        sys.exit(f"{folder}: needs {count} images, has {len(images)}")
    paths = []
    for n, source in enumerate(images):
        path = out / f"{n:02d}.jpg"
        with Image.open(source) as image:
            image.convert("RGB").resize((640, 480), Image.Resampling.BICUBIC).save(path, quality=90)
        paths.append(path)
    return paths


def start_server(checkpoint: Path, device: str) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "captioner", "serve", "--checkpoint", str(checkpoint), "--port", "0",
         "--device", device, "-q"], stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    url = process.stdout.readline().strip()
    if not url:
        sys.exit("captioner serve did not start")
    return process, url


async def post(session: aiohttp.ClientSession, url: str, path: Path) -> str:
    data = aiohttp.FormData()
    data.add_field("image", path.read_bytes(), filename=path.name)
    async with session.post(url + "caption", data=data) as response:
        answer = await response.json()
        if response.status != 200:
            sys.exit(f"{path}: {response.status} {answer}")
        return answer["results"][0]["caption"]


async def seconds(run: Callable[[], Awaitable[object]]) -> float:
    start = time.perf_counter()
    await run()
    return time.perf_counter() - start


async def passes(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url + "health") as response:
        return (await response.json())["forward_passes"]


async def single_image(captioner: Captioner, session: aiohttp.ClientSession, url: str, path: Path,
                       repeats: int) -> tuple[float, float, float]:
    """Median seconds for one image with the Python API and with the server, and the median of
    the server-to-API ratios of the runs taken side by side (steadier while the machine's load
    drifts)."""
    async def api() -> None:
        captioner.caption(path)

    async def served() -> None:
        await post(session, url, path)

    if captioner.caption(path)[0].text != await post(session, url, path):
        sys.exit("the server's caption differs from the Python API's")
    api_s, served_s = [], []
    for _ in range(repeats):  # alternating, so that load on the machine hits both alike
        api_s.append(await seconds(api))
        served_s.append(await seconds(served))
    paired = statistics.median(served / api for api, served in zip(api_s, served_s))
    return statistics.median(api_s), statistics.median(served_s), paired


async def many_requests(session: aiohttp.ClientSession, url: str, paths: list[Path],
                        repeats: int) -> dict[str, tuple[float, int]]:
    """Median seconds (and forward passes) for the requests one by one and all at once."""
    async def one_by_one() -> None:
        for path in paths:
            await post(session, url, path)

    async def all_at_once() -> None:
        await asyncio.gather(*(post(session, url, path) for path in paths))

    timings: dict[str, list[float]] = {"one by one": [], "all at once": []}
    counts: dict[str, int] = {}
    for _ in range(repeats):
        for name, run in (("one by one", one_by_one), ("all at once", all_at_once)):
            before = await passes(session, url)
            timings[name].append(await seconds(run))
            counts[name] = await passes(session, url) - before
    return {name: (statistics.median(values), counts[name]) for name, values in timings.items()}


def model_alone(captioner: Captioner, paths: list[Path], repeats: int) -> dict[int, tuple[float, float]]:
    """Median seconds of the CNN and of the beam search, for one image and for all of them."""
    import torch  # here, not at the top: main() sets OMP_WAIT_POLICY before torch loads

    images = torch.stack([captioner.load(path) for path in paths])
    found = {}
    with torch.inference_mode():
        for n in (1, len(paths)):
            features = captioner.encode(images[:n])  # warm-up, and the search's input
            cnn = [_timed(lambda n=n: captioner.encode(images[:n])) for _ in range(repeats)]
            search = [_timed(lambda f=features: captioner.caption_features(f)) for _ in range(repeats)]
            found[n] = statistics.median(cnn), statistics.median(search)
    return found


def _timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


async def measure(args: argparse.Namespace, captioner: Captioner, url: str, paths: list[Path]) -> None:
    connector = aiohttp.TCPConnector(limit=len(paths))
    async with aiohttp.ClientSession(connector=connector) as session:
        await many_requests(session, url, paths, 1)  # warm-up: every batch size met once
        api_s, served_s, paired = await single_image(captioner, session, url, paths[0], args.repeats)
        print(f"one 640x480 JPEG, median of {args.repeats}: Python API {api_s * 1000:.1f} ms, "
              f"server {served_s * 1000:.1f} ms, ratio {served_s / api_s:.2f}x, median ratio of "
              f"side-by-side runs {paired:.2f}x (target <= 1.2x)")
        found = await many_requests(session, url, paths, max(3, args.repeats // 3))
        (serial, serial_passes), (together, together_passes) = found["one by one"], found["all at once"]
        print(f"{len(paths)} single-image requests, median of {max(3, args.repeats // 3)}: one by one "
              f"{serial:.2f} s ({serial_passes} passes), all at once {together:.2f} s "
              f"({together_passes} passes), {serial / together:.1f}x faster (target >= 3x)")
    alone = model_alone(captioner, paths, max(3, args.repeats // 3))
    print("the model alone, medians: " + "; ".join(
        f"{n} image{'s' * (n > 1)}: CNN {cnn * 1000:.0f} ms, beam search {search * 1000:.0f} ms"
        for n, (cnn, search) in alone.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True, help="a folder of at least --requests images")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads, here and in the server
    from captioner.model.inference import Captioner

    print(describe(args.device) + f"; OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}")
    captioner = Captioner.from_checkpoint(args.checkpoint, device=args.device)
    server, url = start_server(args.checkpoint, args.device)
    try:
        with tempfile.TemporaryDirectory() as folder:
            asyncio.run(measure(args, captioner, url, photos(args.images, args.requests, Path(folder))))
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
