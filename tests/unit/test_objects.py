"""Object mentions for the hallucination analysis: COCO synonyms, shapes pairs, instances files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from captioner.data.instances import kind_of
from captioner.data.shapes import ShapesSpec, generate_shapes
from captioner.data.tokenize import tokenize
from captioner.errors import CaptionerError
from captioner.evaluation.mentions import (
    CocoObjects,
    ShapeObjects,
    coco_mentions,
    load_object_index,
    shape_mentions,
)


@pytest.mark.parametrize(("caption", "objects"), [
    ("Two men riding bikes down the street", {"person", "bicycle"}),
    ("A man eating a hot dog", {"person", "hot dog"}),  # a hot dog is no dog
    ("teddy bears on a couch", {"teddy bear", "couch"}),
    ("a woman talking on her cell-phone", {"person", "cell phone"}),
    ("people and children waiting for the buses", {"person", "bus"}),
    ("a baby elephant next to its mother", {"elephant", "person"}),
    ("a passenger train on the train tracks", {"train"}),
    ("a dirty toilet seat", {"toilet"}),
    ("knives and forks on a dining table", {"knife", "fork", "dining table"}),
    ("a puppy and two kittens", {"dog", "cat"}),
    ("a snowy mountain under a blue sky", set()),
])
def test_coco_synonyms_plurals_and_two_word_names(caption: str, objects: set[str]) -> None:
    assert coco_mentions(tokenize(caption)) == objects


@pytest.mark.parametrize(("caption", "objects"), [
    ("two red circles", {"red circle"}),
    ("a small blue square", {"blue square"}),
    ("a red small circle and three green triangles", {"red circle", "green triangle"}),
    ("there are two large orange squares to the left of a purple circle",
     {"orange square", "purple circle"}),
    ("a red and blue square", {"blue square"}),  # "red" names no shape of its own
    ("a red big circle", set()),  # "big" is not one of the set's size words
    ("a circle", set()),
])
def test_shape_pairs(caption: str, objects: set[str]) -> None:
    assert shape_mentions(tokenize(caption)) == objects


def _write_instances(path: Path, categories: list[dict], annotations: list[dict]) -> Path:
    images = [{"id": i, "file_name": f"{i}.png", "width": 8, "height": 8} for i in (1, 2)]
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": categories}))
    return path


def _shape_annotation(annotation_id: int, image_id: int, category: int, colour: str) -> dict:
    return {"id": annotation_id, "image_id": image_id, "category_id": category,
            "bbox": [0, 0, 4, 4], "area": 16, "iscrowd": 0, "attributes": {"colour": colour}}


SHAPE_CATEGORIES = [{"id": 1, "name": "circle", "supercategory": "shape"},
                    {"id": 2, "name": "square", "supercategory": "shape"}]


def test_shapes_hallucinations_and_misses(tmp_path: Path) -> None:
    path = _write_instances(tmp_path / "instances.json", SHAPE_CATEGORIES, [
        _shape_annotation(1, 1, 1, "red"), _shape_annotation(2, 1, 2, "blue"),
        _shape_annotation(3, 1, 1, "red"),
    ])
    index = load_object_index([path])
    assert isinstance(index, ShapeObjects) and index.kind == "shapes"
    assert index.objects_in_image(1) == {"red circle", "blue square"}
    mentioned = index.objects_in_caption(tokenize("two red circles and a red square"))
    assert mentioned - index.objects_in_image(1) == {"red square"}  # wrong colour for the shape
    assert index.objects_in_image(1) - mentioned == {"blue square"}
    assert index.covers(2) and index.objects_in_image(2) == set()  # listed, no objects
    assert not index.covers(3)


def test_coco_index_uses_category_names(tmp_path: Path) -> None:
    categories = [{"id": 1, "name": "person", "supercategory": "person"},
                  {"id": 18, "name": "dog", "supercategory": "animal"}]
    path = _write_instances(tmp_path / "instances.json", categories, [
        {"id": 1, "image_id": 1, "category_id": 18, "bbox": [0, 0, 4, 4], "area": 16,
         "iscrowd": 0}])
    index = load_object_index([path])
    assert isinstance(index, CocoObjects)
    mentioned = index.objects_in_caption(tokenize("a man walking his dog"))
    assert mentioned - index.objects_in_image(1) == {"person"}


def test_kind_of() -> None:
    assert kind_of(SHAPE_CATEGORIES) == "shapes"
    assert kind_of([{"id": 1, "name": "person", "supercategory": "person"}]) == "coco"
    assert kind_of([]) == "coco"


def test_generated_shapes_captions_mention_exactly_their_objects(tmp_path: Path) -> None:
    root = generate_shapes(tmp_path / "shapes", ShapesSpec(num_train=0, num_val=0, num_test=12))
    index = load_object_index([root / "annotations" / "instances_test.json"])
    captions = json.loads((root / "annotations" / "captions_test.json").read_text())
    assert isinstance(index, ShapeObjects) and captions["annotations"]
    for caption in captions["annotations"]:
        assert (index.objects_in_caption(tokenize(caption["caption"]))
                == index.objects_in_image(caption["image_id"])), caption


def test_bad_instances_files(tmp_path: Path) -> None:
    with pytest.raises(CaptionerError, match="not found"):
        load_object_index([tmp_path / "missing.json"])
    no_colour = _write_instances(tmp_path / "no_colour.json", SHAPE_CATEGORIES, [
        {"id": 7, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4], "area": 16,
         "iscrowd": 0}])
    with pytest.raises(CaptionerError, match="colour"):
        load_object_index([no_colour])
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    with pytest.raises(CaptionerError, match="not a COCO instances file"):
        load_object_index([garbage])
