"""The independent fresh-scene renderer draws what it claims, to the shapes spec."""

from __future__ import annotations

import numpy as np

from benchmarks.fresh_scenes import render_scene, render_scenes
from captioner.data.shapes import COLOURS, SIZE_WORDS

# Colour jitter is up to 15 per channel, so at most 15 * sqrt(3) ~ 26 from the base colour;
# the closest two base colours (red, orange) are ~104 apart.
NEAR = 30
# Fraction of its bounding box each shape fills.
FILL = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}


def near(pixels: np.ndarray, colour: str) -> np.ndarray:
    return np.linalg.norm(pixels.astype(float) - COLOURS[colour], axis=-1) <= NEAR


def test_objects_are_drawn_as_claimed() -> None:
    checked = 0
    for image, objects in render_scenes(30, seed=0):
        pixels = np.asarray(image)
        assert image.size == (128, 128) and 1 <= len(objects) <= 3
        colours = [colour for colour, _ in objects]
        for colour in set(COLOURS) - set(colours):
            assert not near(pixels, colour).any(), f"unclaimed {colour} in {objects}"
        for colour, shape in objects:
            if colours.count(colour) > 1:
                continue  # two objects share the colour: their pixels cannot be told apart
            ys, xs = np.nonzero(near(pixels, colour))
            width, height = np.ptp(xs) + 1, np.ptp(ys) + 1
            assert abs(width - height) <= 1
            low, high = SIZE_WORDS["small"][0], SIZE_WORDS["large"][1]
            assert 2 * low - 1 <= width <= 2 * high + 1
            assert xs.min() >= 4 and xs.max() <= 123 and ys.min() >= 4 and ys.max() <= 123
            assert abs(len(xs) / (width * height) - FILL[shape]) < 0.1, (colour, shape)
            if shape == "triangle":  # apex up: the top row is narrower than the bottom row
                assert (ys == ys.min()).sum() < (ys == ys.max()).sum()
            checked += 1
    assert checked >= 30


def test_same_seed_same_scenes_and_sizes_scale() -> None:
    first, second = render_scenes(3, seed=7), render_scenes(3, seed=7)
    for (a, objects_a), (b, objects_b) in zip(first, second, strict=True):
        assert objects_a == objects_b and a.tobytes() == b.tobytes()
    image, _ = render_scene(np.random.default_rng(1), size=48)
    assert image.size == (48, 48) and image.mode == "RGB"
