"""Reading COCO-format instances files: the objects annotated in each image, by label.

What the classifier pretraining learns from (instance_labels), what the report's hallucination
analysis compares captions against (captioner.evaluation.mentions), and the boxes the pointing
game scores explanations by (load_scenes). pycocotools parses the files.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pycocotools.coco import COCO

from captioner.data.shapes import COLOURS, SHAPES
from captioner.errors import CaptionerError

Kind = Literal["coco", "shapes"]
Box = tuple[float, float, float, float]  # x, y, width, height in image pixels (COCO's bbox)


def kind_of(categories: Iterable[Mapping[str, Any]]) -> Kind:
    """ "shapes" when every category is one of the built-in set's (supercategory "shape")."""
    categories = list(categories)
    if categories and all(c.get("supercategory") == "shape" for c in categories):
        return "shapes"
    return "coco"


def instance_labels(instances_files: Sequence[Path],
                    kind: Kind | None = None) -> tuple[Kind, dict[int, list[str]]]:
    """The label of every annotated object (repeats kept), by image, for every image the files
    list (an image without objects has an empty list); `kind` is detected when None."""
    if not instances_files:
        raise CaptionerError("objects: no instances files given")
    datasets = [_load_instances(Path(path)) for path in instances_files]
    if kind is None:
        kind = kind_of(c for coco in datasets for c in coco.dataset.get("categories", []))
    labels: dict[int, list[str]] = {}
    for path, coco in zip(instances_files, datasets, strict=True):
        names = {c["id"]: c["name"] for c in coco.dataset.get("categories", [])}
        for image_id in coco.getImgIds():
            annotations = coco.imgToAnns.get(image_id, [])
            if kind == "shapes":
                labels[image_id] = [_shape_label(a, names, path) for a in annotations]
            else:
                labels[image_id] = [names[a["category_id"]] for a in annotations]
    return kind, labels


def _load_instances(path: Path) -> COCO:
    if not path.is_file():
        raise CaptionerError(f"objects: instances file not found: {path}")
    try:
        # pycocotools prints progress to stdout, which belongs to the CLI's results.
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(path))
    except (json.JSONDecodeError, KeyError, TypeError, AssertionError) as error:
        raise CaptionerError(f"objects: {path} is not a COCO instances file: {error}") from error


def _shape_label(annotation: Mapping[str, Any], names: Mapping[int, str], path: Path) -> str:
    colour = annotation.get("attributes", {}).get("colour")
    if colour is None:
        raise CaptionerError(
            f"objects: {path}: annotation {annotation.get('id')} has no attributes.colour"
        )
    return f"{colour} {names[annotation['category_id']]}"


@dataclass(frozen=True)
class Scene:
    """An image and its objects (colour, shape, box), from a shapes instances file."""

    image: Path
    width: int
    height: int
    objects: tuple[tuple[str, str, Box], ...]

    def named_boxes(self, word: str) -> list[Box] | None:
        """Boxes of the objects a colour or shape word names (maybe none); None for other words."""
        if word in COLOURS:
            return [box for colour, _, box in self.objects if colour == word]
        singular = word[:-1] if word.endswith("s") else word
        if singular in SHAPES:
            return [box for _, shape, box in self.objects if shape == singular]
        return None


def load_scenes(instances_json: Path, images_dir: Path) -> list[Scene]:
    """The scenes of a shapes instances file (boxes and attributes.colour), by image id."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco = COCO(str(instances_json))
        names = {c["id"]: c["name"] for c in coco.dataset["categories"]}
        return [Scene(images_dir / image["file_name"], image["width"], image["height"],
                      tuple((a["attributes"]["colour"], names[a["category_id"]], tuple(a["bbox"]))
                            for a in coco.imgToAnns[image["id"]]))
                for image in sorted(coco.dataset["images"], key=lambda im: im["id"])]
    except (OSError, json.JSONDecodeError, KeyError, TypeError, AssertionError) as err:
        raise CaptionerError(f"{instances_json}: not a shapes instances file with boxes and "
                             f"attributes.colour ({type(err).__name__}: {err})") from err
