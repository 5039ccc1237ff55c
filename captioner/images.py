"""Reading images the way users have them: any format and mode Pillow knows, upright, as RGB."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from captioner.errors import CaptionerError

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, applying EXIF orientation first."""
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I") or image.mode == "F":
        # 16/32-bit greyscale: convert("RGB") would clip at 255; rescale the full range instead.
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(values.max()), 1.0)
        image = Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode in ("P", "PA", "LA", "RGBA") and (
        "transparency" in image.info or image.mode in ("PA", "LA", "RGBA")
    ):
        # Composite transparency onto white rather than letting hidden pixels show through.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def open_rgb(path: str | os.PathLike[str]) -> Image.Image:
    """Open and fully decode one image as RGB, or raise CaptionerError saying why it cannot be."""
    path = Path(path)
    if not path.exists():
        raise CaptionerError(f"{path}: no such file")
    if path.is_dir():
        raise CaptionerError(f"{path}: is a directory, not an image")
    if path.stat().st_size == 0:
        raise CaptionerError(f"{path}: empty file")
    try:
        with warnings.catch_warnings():
            # A decompression-bomb warning (>89 Mpx) is escalated: such inputs are refused.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                return to_rgb(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise CaptionerError(f"{path}: refused, image too large ({err})") from err
    except UnidentifiedImageError as err:
        raise CaptionerError(f"{path}: not an image Pillow can read") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise CaptionerError(f"{path}: broken or truncated image ({err})") from err


def list_images(directory: Path) -> list[Path]:
    """Image files directly in `directory`, sorted by name."""
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
