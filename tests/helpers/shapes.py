"""Reading the shapes dataset back in tests: its instances by image, and what a caption names."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from captioner.data.shapes import COLOURS, NUMBER_WORDS, SHAPES, SIZE_WORDS
from captioner.data.tokenize import tokenize

SHAPE_FORMS = {s: s for s in SHAPES} | {s + "s": s for s in SHAPES}
COUNTS = {"a": 1, "an": 1} | {w: n for n, w in NUMBER_WORDS.items()}


def objects_by_image(root: Path, split: str) -> dict[int, list[dict]]:
    instances = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
    by_image: dict[int, list[dict]] = {im["id"]: [] for im in instances["images"]}
    for ann in instances["annotations"]:
        by_image[ann["image_id"]].append(ann)
    return by_image


def parse(caption: str) -> tuple[Counter, str]:
    """(colour, shape) counts a caption mentions, and its phrasing with each object list as X."""
    tokens = tokenize(caption)
    mentioned: Counter = Counter()
    spans = []
    for j, token in enumerate(tokens):
        if token not in SHAPE_FORMS:
            continue
        # The colour comes before the shape, with at most a size or number word between.
        k = j - 1 if tokens[j - 1] in COLOURS else j - 2
        assert tokens[k] in COLOURS, caption
        assert k == j - 1 or tokens[j - 1] in set(SIZE_WORDS) | set(NUMBER_WORDS.values())
        start = k - 1 if tokens[k - 1] in SIZE_WORDS else k
        assert start >= 1, caption
        count = COUNTS[tokens[start - 1]]
        assert (count > 1) == token.endswith("s"), caption
        mentioned[(tokens[k], SHAPE_FORMS[token])] += count
        spans.append((start - 1, j))
    words = list(tokens)
    for start, end in reversed(spans):
        words[start:end + 1] = ["X"]
    assert not set(words) & set(COLOURS), f"colour word without a shape: {caption}"
    return mentioned, re.sub(r"X(?: (?:and )?X)*", "X", " ".join(words))
