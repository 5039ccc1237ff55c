"""Splits and image ids of an imported dataset, both deterministic.

Where the source has splits (Flickr8k's lists, Karpathy's files) they are kept. Otherwise the
images, sorted by name, are shuffled with `--seed` and cut by `--split`: the same source and
seed always give the same splits. Ids are the source's own where it has unique ones (COCO,
Karpathy), else each image's position in name order, from 1.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence

from captioner.errors import CaptionerError

SPLIT_NAMES = ("train", "val", "test")


def parse_fractions(text: str) -> tuple[float, float, float]:
    """"0.9,0.05,0.05" -> train, val and test fractions (they must sum to 1)."""
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or any(p < 0 or not math.isfinite(p) for p in parts) \
            or abs(sum(parts) - 1) > 1e-6:
        raise CaptionerError(f"--split {text}: expected three fractions for train,val,test "
                             "that sum to 1, e.g. 0.9,0.05,0.05")
    return parts  # type: ignore[return-value]


def random_splits(images: Sequence[str], fractions: Sequence[float], seed: int) -> dict[str, str]:
    """image -> split: a seeded shuffle of the sorted names, cut by `fractions`.

    A split with a non-zero fraction gets at least one image when there are enough: training
    needs a val split, and evaluation a test split, however small the dataset.
    """
    order = sorted(images)
    random.Random(seed).shuffle(order)
    n = len(order)
    sizes = [round(f * n) for f in fractions[1:]]
    for i, f in enumerate(fractions[1:]):
        if f > 0 and sizes[i] == 0 and n - sum(sizes) > 1:
            sizes[i] = 1
    n_val, n_test = sizes
    n_train = max(0, n - n_val - n_test)
    cuts = {"train": order[:n_train], "val": order[n_train:n_train + n_val],
            "test": order[n_train + n_val:]}
    return {image: split for split, names in cuts.items() for image in names}


def image_ids(images: Sequence[str], source_ids: Mapping[str, int]) -> dict[str, int]:
    """image -> id: the source's ids when every image has one and no two share one."""
    ids = [source_ids.get(image) for image in images]
    if None not in ids and len(set(ids)) == len(ids):
        return dict(zip(images, ids))  # type: ignore[arg-type]
    return {image: n for n, image in enumerate(sorted(images), 1)}
