"""Images as users have them: every format and mode Pillow reads becomes the right RGB picture,
and broken inputs become one clear error each while the other images are still captioned."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.images import truncated
from PIL import Image, ImageFile

from captioner.data.images import limit_aspect, open_rgb, to_rgb
from captioner.errors import CaptionerError
from captioner.model.encoder import build_preprocess

SIZE = (16, 16)
WHITE, RED = (255, 255, 255), (255, 0, 0)


def palette(transparent: bool) -> Image.Image:
    image = Image.new("P", SIZE, 0)
    image.putpalette([255, 0, 0, 0, 0, 255])
    image.paste(1, (0, 0, 8, 16))  # left half blue, right half red
    if transparent:
        image.info["transparency"] = 1  # the blue half is see-through
    return image


def grey16(value: int) -> Image.Image:
    return Image.fromarray(np.full(SIZE[::-1], value, np.uint16))


# name, format, builder, save options, expected colour at the right-centre pixel, tolerance
CASES: list[tuple[str, str, Callable[[], Image.Image], dict, tuple[int, int, int], int]] = [
    ("jpeg-rgb", "JPEG", lambda: Image.new("RGB", SIZE, (200, 30, 30)), {}, (200, 30, 30), 6),
    ("jpeg-l", "JPEG", lambda: Image.new("L", SIZE, 90), {}, (90, 90, 90), 3),
    ("jpeg-cmyk", "JPEG", lambda: Image.new("CMYK", SIZE, (0, 255, 255, 0)), {}, RED, 6),
    ("png-rgb", "PNG", lambda: Image.new("RGB", SIZE, (10, 120, 250)), {}, (10, 120, 250), 0),
    ("png-l", "PNG", lambda: Image.new("L", SIZE, 90), {}, (90, 90, 90), 0),
    ("png-1", "PNG", lambda: Image.new("1", SIZE, 1), {}, WHITE, 0),
    ("png-p", "PNG", lambda: palette(False), {}, RED, 0),
    ("png-rgba", "PNG", lambda: Image.new("RGBA", SIZE, (255, 0, 0, 128)), {}, (255, 127, 127), 1),
    ("png-rgba-clear", "PNG", lambda: Image.new("RGBA", SIZE, (0, 0, 0, 0)), {}, WHITE, 0),
    ("png-la", "PNG", lambda: Image.new("LA", SIZE, (0, 128)), {}, (127, 127, 127), 1),
    ("png-l-trns", "PNG", lambda: Image.new("L", SIZE, 0), {"transparency": 0}, WHITE, 0),
    ("png-rgb-trns", "PNG", lambda: Image.new("RGB", SIZE), {"transparency": (0, 0, 0)}, WHITE, 0),
    ("png-i16", "PNG", lambda: grey16(32768), {}, (128, 128, 128), 0),
    ("tiff-i16", "TIFF", lambda: grey16(65535), {}, WHITE, 0),
    ("gif-p", "GIF", lambda: palette(False), {}, RED, 0),
    ("webp-rgb", "WEBP", lambda: Image.new("RGB", SIZE, (200, 30, 30)), {}, (200, 30, 30), 6),
    ("webp-rgba", "WEBP", lambda: Image.new("RGBA", SIZE, (0, 0, 255, 0)), {"lossless": True}, WHITE, 0),
    ("bmp-rgb", "BMP", lambda: Image.new("RGB", SIZE, (1, 2, 3)), {}, (1, 2, 3), 0),
    ("tiff-rgb", "TIFF", lambda: Image.new("RGB", SIZE, (1, 2, 3)), {}, (1, 2, 3), 0),
    ("tiff-cmyk", "TIFF", lambda: Image.new("CMYK", SIZE, (0, 255, 255, 0)), {}, RED, 0),
    ("ppm", "PPM", lambda: Image.new("RGB", SIZE, (1, 2, 3)), {}, (1, 2, 3), 0),
]


@pytest.mark.parametrize(("name", "fmt", "build", "options", "expected", "tolerance"), CASES,
                         ids=[c[0] for c in CASES])
def test_every_format_and_mode_reads_as_the_right_rgb(
    tmp_path: Path, name: str, fmt: str, build: Callable[[], Image.Image], options: dict,
    expected: tuple[int, int, int], tolerance: int,
) -> None:
    path = tmp_path / f"{name}.{fmt.lower()}"
    build().save(path, fmt, **options)
    image = open_rgb(path)
    assert image.mode == "RGB" and image.size == SIZE
    assert np.abs(np.subtract(image.getpixel((12, 8)), expected)).max() <= tolerance


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_transparency_is_composited_on_white(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"p.{fmt.lower()}"
    palette(True).save(path, fmt)
    image = open_rgb(path)
    assert image.getpixel((2, 8)) == WHITE and image.getpixel((12, 8)) == RED


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 1000, 32768, 65535]], np.uint16)
    Image.fromarray(values).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode == "I;16"
    assert np.asarray(open_rgb(tmp_path / "grey16.png"))[0, :, 0].tolist() == [0, 4, 128, 255]
    # 32-bit integer and float images carry no range: the smallest usual one holding the data.
    assert to_rgb(Image.fromarray(np.full((2, 2), 200, np.int32))).getpixel((0, 0)) == (200,) * 3
    assert to_rgb(Image.fromarray(np.full((2, 2), 40000, np.int32))).getpixel((0, 0)) == (156,) * 3
    assert to_rgb(Image.fromarray(np.full((2, 2), 0.5, np.float32))).getpixel((0, 0)) == (128,) * 3


@pytest.mark.parametrize(("orientation", "red_half"), [(1, "left"), (6, "top"), (8, "bottom")])
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int, red_half: str) -> None:
    canvas = np.zeros((32, 64, 3), np.uint8)
    canvas[:, :32] = RED  # stored: red on the left, black on the right
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "photo.jpg"
    Image.fromarray(canvas).save(path, exif=exif, quality=95)
    for image in (open_rgb(path), to_rgb(Image.open(path))):  # a path, or a PIL image via the API
        width, height = image.size
        assert (width, height) == ((64, 32) if orientation == 1 else (32, 64))
        probe = {"left": (8, height // 2), "top": (width // 2, 8), "bottom": (width // 2, height - 8)}
        assert image.getpixel(probe[red_half])[0] > 200


@pytest.mark.parametrize("size", [(1, 1), (4000, 2), (2, 4000), (3, 7)])
def test_tiny_and_extreme_images_preprocess(size: tuple[int, int]) -> None:
    preprocess = build_preprocess("vgg11_bn", 32, 32)
    image = Image.new("RGB", size, (30, 160, 90))
    assert preprocess(limit_aspect(image)).shape == (3, 32, 32)


def test_limiting_the_aspect_ratio_changes_nothing_the_encoder_sees() -> None:
    rng = np.random.default_rng(0)
    wide = Image.fromarray(rng.integers(0, 256, (8, 80, 3), np.uint8)).resize((640, 64))
    assert limit_aspect(wide).size == (256, 64)
    preprocess = build_preprocess("vgg11_bn", 32, 32)
    assert torch.allclose(preprocess(limit_aspect(wide)), preprocess(wide), atol=1e-5)
    ordinary = Image.new("RGB", (400, 100))
    assert limit_aspect(ordinary) is ordinary


def test_decompression_bombs_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Pillow raises above 2x MAX_IMAGE_PIXELS and only warns between 1x and 2x: both are refused.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    for side in (30, 40, 50):
        Image.new("RGB", (side, side), RED).save(tmp_path / f"{side}.png")
    assert open_rgb(tmp_path / "30.png").size == (30, 30)  # 900 px: under the limit
    for side in (40, 50):  # 1600 px: Pillow's warning range; 2500 px: its error range
        with pytest.raises(CaptionerError, match="refused as a possible decompression bomb"):
            open_rgb(tmp_path / f"{side}.png")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files_are_errors_not_half_pictures(tmp_path: Path, fmt: str) -> None:
    import captioner.features.cache  # noqa: F401  everything that reads images is loaded
    import captioner.model.inference  # noqa: F401

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    with pytest.raises(CaptionerError, match="broken or truncated image"):
        open_rgb(truncated(tmp_path / f"cut.{fmt.lower()}", fmt))


@pytest.mark.parametrize(("make", "needle"), [
    (lambda p: p, "no such file"),
    (lambda p: (p.mkdir(), p)[1], "is a directory, not an image"),
    (lambda p: (p.write_bytes(b""), p)[1], "empty file"),
    (lambda p: (p.write_text("just words"), p)[1], "not an image Pillow can read"),
])
def test_unreadable_paths_say_why(tmp_path: Path, make: Callable[[Path], Path], needle: str) -> None:
    path = make(tmp_path / "photo.jpg")
    with pytest.raises(CaptionerError, match=needle) as caught:
        open_rgb(path)
    assert str(path) in str(caught.value)
