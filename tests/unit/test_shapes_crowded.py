"""Crowded shapes scenes (data.shapes.max_objects): more objects, every one named in captions
that fit the length limits; the standard set unchanged, byte for byte and cache key alike."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from helpers.shapes import objects_by_image, parse

from captioner.config import load_config, shapes_caption_words
from captioner.data.shapes import SHAPES, ShapesSpec, ensure_shapes, generate_shapes
from captioner.data.tokenize import tokenize
from captioner.errors import CaptionerError

STANDARD = ShapesSpec(num_train=6, num_val=2, num_test=2, size=32, seed=1)
# What the generator writes for STANDARD: its data files and cache key as before max_objects
# existed, and the COMPLETE marker that lists them (JSON only: PNG bytes follow the zlib build).
# A GENERATOR_VERSION bump is the one reason to change these.
STANDARD_KEY = "0efd6cc3d97e"
STANDARD_SHA256 = {
    "dataset_shapes.json": "f515473ae5e0e89a65b1abbbab4aaaa4c111ff01f4afaf44ea62a940a345f094",
    "annotations/captions_train.json": "43ca6405a32ad4b66eb45c27acdffbb0d91e045d80c5749230f1a83e3d4b6bb2",
    "annotations/instances_test.json": "df74a02670b7ccda818268cfed90fb03b442a6c9fc31bf80b95e3bdc677fe614",
    "COMPLETE": "951be0175775402aaf436af69e028c157705cb57f6605f84bcd3a272f8a40364",
}
CROWDED = ShapesSpec(num_train=40, num_val=4, num_test=4, size=64, seed=1, max_objects=5)


@pytest.fixture(scope="module")
def crowded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_shapes(tmp_path_factory.mktemp("crowded") / "ds", CROWDED)


def test_the_standard_set_is_unchanged(tmp_path: Path) -> None:
    root = ensure_shapes(STANDARD, cache_dir=tmp_path)
    assert root.name == STANDARD_KEY  # caches generated before the setting stay valid
    for name, digest in STANDARD_SHA256.items():
        assert hashlib.sha256((root / name).read_bytes()).hexdigest() == digest, name
    assert ensure_shapes(replace(STANDARD, max_objects=5), cache_dir=tmp_path) != root


def test_crowded_scenes_name_every_object(crowded: Path) -> None:
    sizes: Counter = Counter()
    for split in CROWDED.split_sizes():
        objects = objects_by_image(crowded, split)
        sizes.update(len(anns) for anns in objects.values())
        captions = json.loads((crowded / "annotations" / f"captions_{split}.json").read_text())
        for ann in captions["annotations"]:
            truth = Counter((a["attributes"]["colour"], SHAPES[a["category_id"] - 1])
                            for a in objects[ann["image_id"]])
            assert parse(ann["caption"])[0] == truth, ann["caption"]
            assert len(tokenize(ann["caption"])) <= shapes_caption_words(CROWDED.max_objects)
    assert set(sizes) == {1, 2, 3, 4, 5}


def test_crowded_scenes_keep_margins_and_gaps(crowded: Path) -> None:
    margin = gap = 2  # 4 px at 128 px, scaled to 64
    for anns in objects_by_image(crowded, "train").values():
        boxes = [a["bbox"] for a in anns]
        for i, (ax, ay, aw, ah) in enumerate(boxes):
            assert min(ax, ay) >= margin and max(ax + aw, ay + ah) <= CROWDED.size - margin
            for bx, by, bw, bh in boxes[i + 1:]:
                assert max(bx - (ax + aw), ax - (bx + bw), by - (ay + ah), ay - (by + bh)) >= gap


def test_groups_of_four_have_a_number_word(crowded: Path) -> None:
    captions = json.loads((crowded / "annotations" / "captions_train.json").read_text())
    assert any(" four " in f" {a['caption']} " for a in captions["annotations"])


@pytest.mark.parametrize("count", [0, 6])
def test_max_objects_outside_what_captions_can_say_is_refused(count: int) -> None:
    with pytest.raises(CaptionerError, match="max_objects must be between 1 and 5"):
        ShapesSpec(max_objects=count)
    with pytest.raises(CaptionerError, match=rf"data.shapes.max_objects={count}; it must be between 1 and 5"):
        load_config(None, [f"data.shapes.max_objects={count}"])


def test_crowded_captions_must_fit_the_length_limits() -> None:
    with pytest.raises(CaptionerError) as error:
        load_config(None, ["data.shapes.max_objects=5"])
    assert str(error.value) == (
        "bad configuration: data.shapes.max_objects=5 makes captions of up to 25 words; set "
        "data.max_length (now 20) and eval.max_length (now 20) to at least 25")
    config = load_config(None, ["data.shapes.max_objects=5", "data.max_length=25", "eval.max_length=25"])
    assert config.data.shapes.max_objects == 5
    # The standard set keeps whatever limits a user chose before.
    assert load_config(None, ["data.max_length=12"]).data.max_length == 12
