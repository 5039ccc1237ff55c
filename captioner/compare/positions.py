"""Object mentions scored by their place in the caption: the 1st, 2nd, 3rd... object named.

In a show-and-tell decoder the image enters only the initial state, so the k-th object a caption
names has been carried across more steps the larger k is: a cell that forgets should name later
objects worse (precision) or stop naming them (coverage). Objects are those of an ObjectIndex
(shapes: "colour shape" labels; COCO: categories), each counted once per caption, at the place
the caption first names it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from captioner.evaluation.mentions import ObjectIndex


@dataclass(frozen=True)
class PositionScores:
    """Lists over positions k = 1, 2, ... (first position first), up to the most distinct
    objects any scored image holds. Precision stops there: further positions would depend on how
    many objects captions invent, not on the data, and so differ in length between runs."""

    precision: list[float | None]  # of the k-th objects named, the share the image holds
    coverage: list[float | None]  # of images holding >= k objects, the share with >= k of them named
    mentions: list[int]  # captions that name a k-th object
    images: list[int]  # images that hold at least k distinct objects


def score_positions(captions: Mapping[int, Sequence[str]], objects: ObjectIndex) -> PositionScores:
    """Per-position precision and coverage of the captions' tokens, by image id; images the
    index does not cover are skipped. None where a position has nothing to score."""
    scored = {image_id: tokens for image_id, tokens in captions.items() if objects.covers(image_id)}
    positions = max((len(objects.objects_in_image(i)) for i in scored), default=0)
    right, named, covered, images = ([0] * positions for _ in range(4))
    for image_id, tokens in scored.items():
        present = objects.objects_in_image(image_id)
        hits = [m in present for m in objects.objects_in_caption_order(tokens)]
        for k, hit in enumerate(hits[:positions]):
            named[k] += 1
            right[k] += hit
        for k in range(len(present)):
            images[k] += 1
            covered[k] += sum(hits) > k
    return PositionScores(_shares(right, named), _shares(covered, images), named, images)


def _shares(counts: Sequence[int], totals: Sequence[int]) -> list[float | None]:
    return [count / total if total else None for count, total in zip(counts, totals, strict=True)]


def ordinal(n: int) -> str:
    """ "1st", "2nd", "3rd", "4th", ... "11th", "21st": how the page names a position."""
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"
