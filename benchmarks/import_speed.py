"""How long `captioner data import` takes on a Flickr30k-sized source (30k images, 150k captions).

Writes a Flickr30k-layout set in a temporary folder (results_20130124.token and tiny JPEGs in
flickr30k_images/, a few distinct pictures repeated, since only their count matters here),
imports it twice, and deletes everything:

  - checked: images only checked for existence and size (the default);
  - verified: every image decoded (--verify-images), in parallel on every core.

Each figure is the median of --repeats runs, both kinds measured in the same run.

With --csv-rows N it times instead one import of an N-row CSV naming N/5 images, of which only
--images exist (the rest are reported missing), and prints the peak RSS: the issue 22 case.

    python benchmarks/import_speed.py [--images 30000] [--captions-per-image 5] [--repeats 3]
    python benchmarks/import_speed.py --csv-rows 1000000 --images 2000
"""

from __future__ import annotations

import argparse
import contextlib
import io
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

from captioner.data.importing import import_dataset  # noqa: E402

WORDS = ("a man woman child dog two people in on the with of and is are red blue green white black "
         "shirt street water grass ball bike running sitting standing walking playing near front "
         "group young old small large wearing holding looking camera building table car beach snow "
         "field crowd stage guitar girl boy hat jacket orange yellow").split()


def write_source(root: Path, n_images: int, per_image: int, seed: int = 0) -> Path:
    """Flickr30k's layout: the token file beside flickr30k_images/ with n_images JPEGs."""
    folder = root / "flickr30k_images"
    folder.mkdir(parents=True)
    pictures = []
    for k in range(8):
        buffer = io.BytesIO()
        Image.new("RGB", (32, 24), (30 * k, 90, 200 - 20 * k)).save(buffer, format="JPEG")
        pictures.append(buffer.getvalue())
    rng = random.Random(seed)
    lines = []
    for i in range(n_images):
        name = f"{1000000 + i}.jpg"
        (folder / name).write_bytes(pictures[i % len(pictures)])
        for k in range(per_image):
            words = [rng.choice(WORDS) for _ in range(rng.randint(6, 18))]
            lines.append(f"{name}#{k}\t{' '.join(words).capitalize()} .")
    token = root / "results_20130124.token"
    token.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return token


def large_csv(root: Path, rows: int, existing: int, seed: int = 0) -> Path:
    """`rows` captions over rows/5 image names, the first `existing` of them real JPEGs."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="JPEG")
    names = max(1, rows // 5)
    for i in range(min(existing, names)):
        (root / f"{i}.jpg").write_bytes(buffer.getvalue())
    rng = random.Random(seed)
    path = root / "captions.csv"
    with open(path, "w", encoding="utf-8") as f:
        f.write("image,caption\n")
        for r in range(rows):
            f.write(f"{r % names}.jpg,{' '.join(rng.choice(WORDS) for _ in range(rng.randint(6, 18)))}\n")
    return path


def timed_import(token: Path, out: Path, verify: bool) -> float:
    start = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):  # the stage lines
        report = import_dataset(token, out, verify_images=verify)
    seconds = time.perf_counter() - start
    assert report.images_kept == report.images_listed, report.captions_dropped
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=30_000)
    parser.add_argument("--captions-per-image", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--csv-rows", type=int, default=0)
    args = parser.parse_args()
    print(describe())
    if args.csv_rows:
        with tempfile.TemporaryDirectory(prefix="import-speed-") as tmp:
            path = large_csv(Path(tmp), args.csv_rows, args.images)
            start = time.perf_counter()
            with contextlib.redirect_stderr(io.StringIO()):
                report = import_dataset(path, Path(tmp) / "out")
            seconds = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        print(f"{args.csv_rows} CSV rows, {report.images_kept} images kept: {seconds:.1f} s, "
              f"peak RSS {peak:.0f} MB")
        return
    with tempfile.TemporaryDirectory(prefix="import-speed-") as tmp:
        start = time.perf_counter()
        token = write_source(Path(tmp), args.images, args.captions_per_image)
        print(f"wrote {args.images} images, {args.images * args.captions_per_image} captions "
              f"in {time.perf_counter() - start:.1f} s")
        times: dict[str, list[float]] = {"checked": [], "verified": []}
        for r in range(args.repeats):
            for kind in times:  # interleaved, so both kinds see the same machine load
                times[kind].append(timed_import(token, Path(tmp) / f"out-{kind}-{r}", kind == "verified"))
    for kind, values in times.items():
        print(f"{kind:9} median {statistics.median(values):6.1f} s  "
              f"(runs: {', '.join(f'{v:.1f}' for v in values)})")


if __name__ == "__main__":
    main()
