"""Do per-word maps mean anything? Two checks from the literature, for scenes with known boxes.

Pointing game (Zhang et al. 2016): a colour or shape word's map should peak inside the box of
an object the word names ("red": any red object; "circles": any circle). Model randomisation
(Adebayo et al. 2018): maps made with re-initialised weights should differ from the trained
ones (Spearman's rank correlation near 0), or they do not depend on what the model learnt.
benchmarks/pointing_game.py reports both on the shapes test scenes.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Sequence

import numpy as np

from captioner.data.instances import Box, Scene
from captioner.data.shapes import COLOURS
from captioner.errors import CaptionerError
from captioner.model.encoder import build_encoder
from captioner.model.explain import Explanation
from captioner.model.inference import Captioner
from captioner.model.network import CaptionModel

Point = tuple[float, float]  # x, y in image pixels
# What pointing_game scores: the word's map, then the baselines it should beat, then the ceiling.
POINTERS = ("map", "caption's mean map", "centre", "random cell", "grid ceiling")
RANDOMISED = ("fc", "convs", "all")


def view_to_image(point: Point, width: int, height: int, resize: int, crop: int) -> Point:
    """A point of the model's view (the shorter side resized to `resize`, then a centre crop of
    `crop`, as torchvision's Resize and CenterCrop do it) in the original image's pixels."""
    scale = resize / min(width, height)
    resized_w, resized_h = int(width * scale), int(height * scale)
    left, top = int(round((resized_w - crop) / 2.0)), int(round((resized_h - crop) / 2.0))
    return (point[0] + left) * width / resized_w, (point[1] + top) * height / resized_h


def inside(point: Point, boxes: Sequence[Box]) -> bool:
    x, y = point
    return any(bx <= x <= bx + w and by <= y <= by + h for bx, by, w, h in boxes)


def pointing_game(scenes: Sequence[Scene], explanations: Sequence[Explanation | None],
                  resize: int, crop: int) -> Counter:
    """Counts keyed (kind, what), kind "colour" or "shape": "words" scored, "names nothing"
    (left out), "all-zero map" (scored as misses), and hits of the word's "map", of "the
    caption's mean map" (one peak for all its words: a word's own map should beat it), of the
    "centre" point, a "random cell" (expected hits) and the "grid ceiling" (some cell centre)."""
    tally: Counter = Counter()
    for scene, explanation in zip(scenes, explanations, strict=True):
        if explanation is None or not explanation.words:
            continue
        _, rows, cols = explanation.maps.shape
        cells = [view_to_image(((c + 0.5) * crop / cols, (r + 0.5) * crop / rows), scene.width,
                               scene.height, resize, crop) for r in range(rows) for c in range(cols)]
        caption_peak = cells[int(explanation.maps.mean(0).argmax())]
        for word, peak in zip(explanation.words, explanation.peaks(), strict=True):
            boxes = scene.named_boxes(word)
            if boxes is None:
                continue
            kind = "colour" if word in COLOURS else "shape"
            if not boxes:
                tally[kind, "names nothing"] += 1
                continue
            hits = [inside(cell, boxes) for cell in cells]
            tally.update({
                (kind, "words"): 1,
                (kind, "all-zero map"): peak is None,
                (kind, "map"): peak is not None and inside(
                    view_to_image(peak, scene.width, scene.height, resize, crop), boxes),
                (kind, "caption's mean map"): inside(caption_peak, boxes),
                (kind, "centre"): inside((scene.width / 2, scene.height / 2), boxes),
                (kind, "random cell"): sum(hits) / len(hits),
                (kind, "grid ceiling"): any(hits),
            })
    return tally


def randomised(captioner: Captioner, which: str, seed: int) -> Captioner:
    """The captioner with its encoder's "fc" layers (fc6, fc7), "convs" (with their batch norms)
    or "all" re-initialised as torchvision initialises a VGG, from `seed`; the decoder shared."""
    if which not in RANDOMISED:
        raise CaptionerError(f"randomised: choose one of {', '.join(RANDOMISED)}, got {which!r}")
    fresh = build_encoder(captioner.config.encoder.arch, "none", seed=seed)
    encoder = copy.deepcopy(captioner.model.encoder)
    if which in ("fc", "all"):
        encoder.fc.load_state_dict(fresh.fc.state_dict())
    if which in ("convs", "all"):
        encoder.features.load_state_dict(fresh.features.state_dict())
    model = CaptionModel(encoder, captioner.model.decoder)
    return Captioner(model, captioner.vocab, captioner.config, captioner.device,
                     precision=captioner.precision)


def rank_correlations(these: Sequence[Explanation | None],
                      those: Sequence[Explanation | None]) -> list[float]:
    """Spearman's rho between each word's two maps (explanations of the same captions); NaN
    where either map is constant, all zeros included."""
    rhos = []
    for mine, theirs in zip(these, those, strict=True):
        if mine is None or theirs is None:
            continue
        if mine.words != theirs.words:
            raise CaptionerError("rank_correlations: the explanations are of different captions")
        rhos.extend(spearman(a, b) for a, b in zip(mine.maps, theirs.maps, strict=True))
    return rhos


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation of two arrays' values, ties given their mean rank; NaN if either is
    constant."""
    a, b = a.ravel(), b.ravel()
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(np.corrcoef(_ranks(a), _ranks(b))[0, 1])


def _ranks(x: np.ndarray) -> np.ndarray:
    _, tie_group = np.unique(x, return_inverse=True)
    rank = np.empty(len(x))
    rank[np.argsort(x, kind="stable")] = np.arange(len(x))
    return (np.bincount(tie_group, rank) / np.bincount(tie_group))[tie_group]
