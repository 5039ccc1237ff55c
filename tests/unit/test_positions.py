"""Objects a caption names, in order, and their precision and coverage by place in the caption."""

from __future__ import annotations

import pytest

from captioner.compare.positions import score_positions
from captioner.data.tokenize import tokenize
from captioner.evaluation.mentions import (
    CocoObjects,
    ShapeObjects,
    coco_mentions,
    coco_mentions_in_order,
    shape_mentions,
    shape_mentions_in_order,
)


@pytest.mark.parametrize(("caption", "ordered"), [
    ("a blue square , a red circle and five green triangles",
     ["blue square", "red circle", "green triangle"]),
    ("a red circle above a red circle and a small yellow square",  # named once, where first
     ["red circle", "yellow square"]),
    ("there are four large orange circles", ["orange circle"]),
    ("a dark background", []),
])
def test_shape_mentions_in_caption_order(caption: str, ordered: list[str]) -> None:
    tokens = tokenize(caption)
    assert shape_mentions_in_order(tokens) == ordered
    assert shape_mentions(tokens) == set(ordered)


def test_coco_mentions_in_caption_order() -> None:
    tokens = tokenize("a hot dog on a table next to a dog and a man with another dog")
    assert coco_mentions_in_order(tokens) == ["hot dog", "dining table", "dog", "person"]
    assert coco_mentions(tokens) == {"hot dog", "dining table", "dog", "person"}


SCENES = ShapeObjects({
    1: frozenset({"red circle", "blue square", "green triangle"}),
    2: frozenset({"red circle", "blue square"}),
    3: frozenset({"yellow circle"}),
    4: frozenset({"purple square", "orange triangle", "red square"}),
})


def test_precision_and_coverage_by_position_on_hand_written_captions() -> None:
    captions = {
        # right, right, wrong (no yellow circle): 2 of the 3 objects named
        1: "a red circle , a blue square and a yellow circle",
        # the same object twice is one mention; the second object is missed
        2: "a red circle above a red circle",
        # wrong, then right
        3: "a green square and a yellow circle",
        # right, right, right
        4: "a red square , a purple square and an orange triangle",
        5: "a red circle",  # not in the instances: not scored
    }
    scores = score_positions({i: tokenize(c) for i, c in captions.items()}, SCENES)
    assert scores.mentions == [4, 3, 2]  # image 2's caption names one object, 1 and 4 three
    assert scores.precision == [3 / 4, 3 / 3, 1 / 2]
    assert scores.images == [4, 3, 2]  # images holding at least 1, 2, 3 objects
    # >= 1 right: images 1, 2, 3, 4; >= 2 right (of 1, 2, 4): 1 and 4; >= 3 (of 1, 4): 4 only
    assert scores.coverage == [4 / 4, 2 / 3, 1 / 2]


def test_positions_stop_at_the_most_objects_an_image_holds() -> None:
    # Image 3 holds one object; a caption naming a wrong object first still gets the right one
    # counted for coverage, but precision has one position only.
    objects = ShapeObjects({3: frozenset({"yellow circle"})})
    scores = score_positions({3: tokenize("a green square and a yellow circle")}, objects)
    assert scores.precision == [0.0] and scores.coverage == [1.0] and scores.mentions == [1]


def test_positions_without_anything_to_score() -> None:
    scores = score_positions({1: tokenize("a man")}, CocoObjects({1: frozenset()}))
    assert scores == score_positions({}, CocoObjects({}))
    assert scores.precision == scores.coverage == scores.mentions == scores.images == []
    silent = score_positions({2: []}, SCENES)
    assert silent.precision == [None, None] and silent.coverage == [0.0, 0.0]
