"""Reading images the way users have them: any format and mode Pillow knows, upright, as RGB.

Policy for hostile or broken files: every failure becomes a CaptionerError naming the file, so a
caller can report it and go on with the other images. Images of more than `max_pixels` pixels
(default MAX_PIXELS, Pillow's own ~89 Mpx limit) are refused before they are decoded, as possible
decompression bombs; Pillow itself only warns up to twice its limit. Truncated files are errors,
never half-decoded pictures (`ImageFile.LOAD_TRUNCATED_IMAGES` stays off).
"""

from __future__ import annotations

import os
import sys
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from captioner.errors import CaptionerError

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)
ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
# Resize-then-centre-crop only ever looks at a central square, so a longer side is dead weight.
MAX_ASPECT = 4.0
# Images above this many pixels are refused undecoded: Pillow's own decompression-bomb limit.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, applying EXIF orientation first."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        image = _high_depth_to_l(image)
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        # Composite transparency onto white rather than letting hidden pixels show through.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def _high_depth_to_l(image: Image.Image) -> Image.Image:
    """16/32-bit integer or float greyscale to 8 bits, scaled (convert("L") would clip at 255).

    I;16 uses its full 0..65535 range; "I" and "F" carry no range, so take the smallest usual
    one that holds the data (1, 255, 65535), else the image's maximum.
    """
    values = np.asarray(image, dtype=np.float64)
    peak = float(values.max(initial=0.0))
    if image.mode.startswith("I;16"):
        top = 65535.0
    else:
        top = next((t for t in (1.0, 255.0, 65535.0) if peak <= t), peak)
    return Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")


def limit_aspect(image: Image.Image, max_ratio: float = MAX_ASPECT) -> Image.Image:
    """Centre-crop the long side to `max_ratio` times the short side (a 4000x2 strip would
    otherwise be resized to 512000x256 before the centre crop throws almost all of it away)."""
    width, height = image.size
    short = min(width, height)
    keep = max(short, round(short * max_ratio))
    if max(width, height) <= keep:
        return image
    if width > height:
        left = (width - keep) // 2
        return image.crop((left, 0, left + keep, height))
    top = (height - keep) // 2
    return image.crop((0, top, width, top + keep))


def open_rgb(path: str | os.PathLike[str] | BinaryIO, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open and fully decode one image (a path or a binary file) as RGB, or raise CaptionerError
    saying why it cannot be."""
    if not isinstance(path, (str, os.PathLike)):
        return _decode(path, "<stdin>" if path is sys.stdin.buffer else getattr(path, "name", "<upload>"),
                       max_pixels)
    path = Path(path)
    if not path.exists():
        raise CaptionerError(f"{path}: no such file")
    if path.is_dir():
        raise CaptionerError(f"{path}: is a directory, not an image")
    if not path.is_file():
        raise CaptionerError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise CaptionerError(f"{path}: empty file")
    try:
        with open(path, "rb") as f:
            return _decode(f, str(path), max_pixels)
    except PermissionError as err:
        raise CaptionerError(f"{path}: permission denied") from err


def _decode(source: BinaryIO, name: str, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                if image.width * image.height > max_pixels:
                    raise CaptionerError(f"{name}: refused: {image.width}x{image.height} pixels is over "
                                         f"the {max_pixels:,}-pixel limit (--max-pixels)")
                image.load()
                return to_rgb(image)
    except CaptionerError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise CaptionerError(f"{name}: refused as a possible decompression bomb ({err})") from err
    except UnidentifiedImageError as err:
        raise CaptionerError(f"{name}: not an image Pillow can read") from err
    except Exception as err:  # Pillow's decoders raise many types (OSError, SyntaxError, struct.error...)
        raise CaptionerError(f"{name}: broken or truncated image ({type(err).__name__}: {err})") from err


@dataclass
class Listing:
    """The images of a folder, and what was passed over (by reason, counted)."""

    images: list[Path]
    skipped: dict[str, int]

    def note(self) -> str | None:
        """"skipped 1 hidden file, 3 files in subfolders (--recursive includes them)", or None."""
        parts = [f"{n} {_PLURALS[reason] if n > 1 else reason}" for reason in _PLURALS
                 if (n := self.skipped.get(reason, 0))]
        return ("skipped " + ", ".join(parts)) if parts else None


def list_images(directory: Path, recursive: bool = False) -> Listing:
    """Image files in `directory` (and below it with `recursive`), sorted by path. Hidden files and
    folders (a leading dot) are left out; so are files in subfolders unless `recursive`."""
    images: list[Path] = []
    skipped: Counter[str] = Counter()
    for top, folders, files in os.walk(directory):
        root = Path(top)
        visible = sorted(f for f in folders if not f.startswith("."))
        if not recursive:
            skipped[_SUBFOLDER] += sum(_count_files(root / f) for f in visible)
        folders[:] = visible if recursive else []
        for name in files:
            if name.startswith("."):
                skipped[_HIDDEN] += 1
            elif Path(name).suffix.lower() in IMAGE_SUFFIXES:
                images.append(root / name)
            else:
                skipped[_NOT_IMAGE] += 1
    return Listing(sorted(images), dict(skipped))


_HIDDEN, _NOT_IMAGE = "hidden file", "file that is not an image"
_SUBFOLDER = "file in a subfolder (--recursive includes it)"
_PLURALS = {_HIDDEN: "hidden files", _SUBFOLDER: "files in subfolders (--recursive includes them)",
            _NOT_IMAGE: "files that are not images"}


def _count_files(folder: Path) -> int:
    return sum(len([f for f in files if not f.startswith(".")]) for _, _, files in os.walk(folder))
