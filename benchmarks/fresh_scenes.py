"""Fresh scenes drawn to the shapes spec by a second, independent renderer.

Used to measure whether a trained model names what is in a picture. It shares only the palette
and vocabulary with captioner.data.shapes, not its placement or drawing code, so a model is
scored against the spec rather than against the quirks of one implementation: here objects are
rasterised from numpy masks at pixel centres, with float positions and half-extents.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from captioner.data.shapes import COLOURS, SHAPES, SIZE_WORDS

_REFERENCE_SIZE = 128  # the spec's pixel figures are for this canvas size
_MARGIN = 4.0
_GAP = 4.0
_JITTER = 15
_MAX_BACKGROUND = 60
_MAX_NOISE_SIGMA = 6.0

Scene = tuple[Image.Image, list[tuple[str, str]]]


@dataclass(frozen=True)
class _Shape:
    colour: str
    shape: str
    cx: float
    cy: float
    half: float  # half the side of the square bounding box


def render_scene(rng: np.random.Generator, size: int = 128, max_objects: int = 3) -> Scene:
    """One scene of 1 to `max_objects` objects (the spec's 3; data.shapes.max_objects for crowded
    sets) and its objects as (colour, shape) pairs, in drawing order."""
    shapes = _layout(rng, size, max_objects)
    pixels = _background(rng, size)
    ys, xs = np.mgrid[0:size, 0:size] + 0.5  # pixel centres
    for s in shapes:
        rgb = np.clip(np.add(COLOURS[s.colour], rng.integers(-_JITTER, _JITTER + 1, 3)), 0, 255)
        pixels[_mask(s, xs, ys)] = rgb
    return Image.fromarray(pixels), [(s.colour, s.shape) for s in shapes]


def render_scenes(n: int, seed: int, size: int = 128, max_objects: int = 3) -> list[Scene]:
    """`n` scenes from one seeded generator: the same arguments give the same scenes."""
    rng = np.random.default_rng(seed)
    return [render_scene(rng, size, max_objects) for _ in range(n)]


def _layout(rng: np.random.Generator, size: int, max_objects: int) -> list[_Shape]:
    scale = size / _REFERENCE_SIZE
    margin, gap = _MARGIN * scale, _GAP * scale
    count = int(rng.integers(1, max_objects + 1))
    while True:  # rejection sampling of the whole scene until every box keeps its distance
        shapes = []
        for _ in range(count):
            low, high = SIZE_WORDS[str(rng.choice(list(SIZE_WORDS)))]
            half = rng.uniform(low, high) * scale
            cx, cy = rng.uniform(margin + half, size - margin - half, size=2)
            shapes.append(_Shape(str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES)),
                                 float(cx), float(cy), float(half)))
        if all(_apart(a, b, gap) for i, a in enumerate(shapes) for b in shapes[i + 1:]):
            return shapes


def _apart(a: _Shape, b: _Shape, gap: float) -> bool:
    reach = a.half + b.half + gap
    return abs(a.cx - b.cx) >= reach or abs(a.cy - b.cy) >= reach


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    base = rng.integers(0, _MAX_BACKGROUND + 1, 3)
    noisy = base + rng.normal(0.0, rng.uniform(0.0, _MAX_NOISE_SIGMA), (size, size, 3))
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def _mask(s: _Shape, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    dx, dy = xs - s.cx, ys - s.cy
    if s.shape == "circle":
        return dx**2 + dy**2 <= s.half**2
    if s.shape == "square":
        return (np.abs(dx) <= s.half) & (np.abs(dy) <= s.half)
    # Isosceles, apex up at the box's top centre, base on its bottom edge: the half-width
    # grows from 0 at the apex to `half` at the base, i.e. half of the depth below the apex.
    depth = dy + s.half
    return (depth >= 0) & (dy <= s.half) & (np.abs(dx) <= depth / 2)
