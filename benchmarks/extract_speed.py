"""Feature extraction speed: the real pipeline against a naive fp32 loop and the bare model.

Three ways over the same synthetic 640x480 JPEGs (COCO's usual size), VGG16 with random weights
(speed does not depend on them), 224 px crops of 256 px resizes:

    naive:     decode + preprocess in the main process, batched fp32 forward, default NCHW layout
    bare:      the forward alone, bf16 autocast + channels_last, on tensors decoded beforehand
    pipeline:  captioner.features.cache.extract_features: DataLoader workers decode, bf16 autocast +
               channels_last forward, float16 shards written to disk, then merged

The images are cut into rounds and the three take turns on each, so a shared machine's changing
load falls on all three alike. Targets: pipeline >= 3x naive and >= 0.8x bare.

    python benchmarks/extract_speed.py [--images 256] [--batch-size 32] [--workers N] [--rounds 2]

(with the package installed, or PYTHONPATH=. from a source checkout)
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from machine import describe  # benchmarks/ is on sys.path as a script
from PIL import Image

from captioner.data.coco import ImageRecord
from captioner.data.images import open_rgb
from captioner.features.cache import extract_features, merge_shards
from captioner.model.encoder import build_encoder, build_preprocess, encode
from captioner.util.hardware import fast_bf16

COCO_IMAGES = 123_287


def write_jpegs(folder: Path, n: int) -> list[ImageRecord]:
    """Photo-like 640x480 JPEGs: smooth colour fields plus grain, about COCO's bytes per image."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((640, 480), Image.BICUBIC), dtype=np.float32)
        pixels = np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8)
        path = folder / f"{i:06d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        records.append(ImageRecord(i, path, "bench", ()))
    return records


def batches(items: Sequence, size: int) -> list[Sequence]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def timed(run: Callable[..., None], *args: object) -> float:
    start = time.perf_counter()
    run(*args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--rounds", type=int, default=2,
                        help="turns each way takes, each on 1/rounds of the images")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    args = parser.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    per_round = args.images // args.rounds
    if per_round % args.batch_size:
        parser.error("--images / --rounds must be a multiple of --batch-size (no partial batches)")

    torch.manual_seed(0)
    naive_encoder = build_encoder("vgg16", "none").eval().to(device)
    fast_encoder = copy.deepcopy(naive_encoder).to(memory_format=torch.channels_last)
    preprocess = build_preprocess("vgg16", 224, 256)
    bf16 = fast_bf16(device)
    print(f"machine: {describe(str(device))}")
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    print(f"VGG16 fc7, random weights, 224 px, {args.images} JPEGs 640x480, batch {args.batch_size}, "
          f"{device}, pipeline with {args.workers} workers, {'bf16' if bf16 else 'fp32 (no fast bf16 here)'}")

    with tempfile.TemporaryDirectory() as tmp:
        records = write_jpegs(Path(tmp), args.images)
        print(f"images: {sum(r.path.stat().st_size for r in records) / len(records) / 1e3:.0f} kB each")

        def naive(chunk: Sequence[ImageRecord]) -> None:
            with torch.inference_mode():
                for batch in batches(chunk, args.batch_size):
                    images = torch.stack([preprocess(open_rgb(r.path)) for r in batch])
                    naive_encoder(images.to(device)).cpu()

        def bare(decoded: torch.Tensor) -> None:
            for batch in batches(decoded, args.batch_size):
                encode(fast_encoder, batch, bf16).cpu()

        def pipeline(chunk: Sequence[ImageRecord], folder: Path) -> None:
            extract_features(fast_encoder, preprocess, chunk, folder, key={}, bf16=bf16,
                             batch_size=args.batch_size, num_workers=args.workers, desc="pipeline")
            merge_shards(folder, {})

        warm = records[:args.batch_size]  # one batch each first: oneDNN/cuDNN pick their kernels
        naive(warm)
        bare(torch.stack([preprocess(open_rgb(r.path)) for r in warm]))
        pipeline(warm, Path(tmp) / "warm")
        seconds = {"naive": 0.0, "bare": 0.0, "pipeline": 0.0}
        for n, chunk in enumerate(batches(records, per_round)):
            decoded = torch.stack([preprocess(open_rgb(r.path)) for r in chunk])  # not timed
            seconds["naive"] += timed(naive, chunk)
            seconds["bare"] += timed(bare, decoded)
            seconds["pipeline"] += timed(pipeline, chunk, Path(tmp) / f"round{n}")

    rate = {name: args.images / s for name, s in seconds.items()}
    labels = {"naive": "naive fp32 loop (main-process decode, NCHW)",
              "bare": f"bare {'bf16' if bf16 else 'fp32'} + channels_last forward, pre-decoded",
              "pipeline": f"pipeline (extract_features, {args.workers} workers)"}
    for name, label in labels.items():
        hours = COCO_IMAGES / rate[name] / 3600
        print(f"{label:55s} {rate[name]:8.2f} images/s   COCO's {COCO_IMAGES:,} images: {hours:6.1f} h")
    print(f"pipeline / naive: {rate['pipeline'] / rate['naive']:.2f}x (target >= 3x)")
    print(f"pipeline / bare:  {rate['pipeline'] / rate['bare']:.2f}x (target >= 0.8x)")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
