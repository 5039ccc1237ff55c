"""Small image files for tests: random pictures as dataset records, and JPEGs for importers."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from captioner.data.coco import ImageRecord


def random_image_records(folder: Path, n: int) -> list[ImageRecord]:
    """n small random PNGs in `folder`, as val-split records with ids 1..n."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
        records.append(ImageRecord(i + 1, path, "val", ("a caption",)))
    return records


def jpegs(folder: Path, names: list[str]) -> None:
    """Tiny JPEGs of distinct colours named `names` in `folder` (created)."""
    folder.mkdir(parents=True, exist_ok=True)
    for n, name in enumerate(names):
        Image.new("RGB", (24, 16), (20 * n % 256, 90, 160)).save(folder / name, format="JPEG")


def truncated(path: Path, fmt: str) -> Path:
    """A random 64x64 picture saved as `fmt`, cut off halfway."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), np.uint8)).save(path, fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that only declares its size: Pillow judges decompression bombs by the header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


def broken_inputs(folder: Path) -> dict[str, tuple[Path, str]]:
    """Every kind of broken input, made in `folder`, with the words its error must contain."""
    (folder / "folder.jpg").mkdir()
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.png").write_text("not an image")
    return {
        "missing": (folder / "missing.jpg", "no such file"),
        "directory": (folder / "folder.jpg", "no images in this folder"),
        "empty": (folder / "empty.jpg", "empty file"),
        "truncated-jpeg": (truncated(folder / "cut.jpg", "JPEG"), "broken or truncated"),
        "truncated-png": (truncated(folder / "cut.png", "PNG"), "broken or truncated"),
        "not-an-image": (folder / "notes.png", "not an image Pillow can read"),
        "bomb": (png_header(folder / "bomb.png", 20_000, 20_000), "decompression bomb"),
        "bomb-warning": (png_header(folder / "big.png", 10_000, 10_000), "decompression bomb"),
    }


def good_images(folder: Path) -> list[Path]:
    """Two readable pictures: an RGB PNG and a greyscale JPEG."""
    paths = [folder / "good1.png", folder / "good2.jpg"]
    Image.new("RGB", (40, 30), (200, 30, 30)).save(paths[0])
    Image.new("L", (30, 40), 128).save(paths[1])
    return paths
