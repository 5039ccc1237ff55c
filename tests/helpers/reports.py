"""A tiny, hostile evaluation set for the report tests: real image files, a shapes-style
instances file, a CSVLogger log with gaps, and captions and file names that try HTML injection."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from captioner.evaluation.report import ImageResult

SCRIPT_CAPTION = "<script>alert(1)</script> a red circle"
IMG_FILE_NAME = '"><img src=x onerror=alert(2)>.png'
GENERIC = "a purple triangle"

# image id: (file name, size, objects as (colour, shape), prediction, references)
_IMAGES = {
    1: ("red circle.png", (64, 64), [("red", "circle")], "a red circle",
        ["a red circle", "a small red circle", "a red circle on a dark background"]),
    # A large JPEG, as COCO's are: the report must show a small thumbnail of it.
    2: ("big.jpg", (1600, 1200), [("blue", "square")], "a blue square",
        ["a blue square", "a large blue square", "there is a blue square"]),
    3: (IMG_FILE_NAME, (64, 64), [("red", "circle"), ("green", "square")], SCRIPT_CAPTION,
        ["a red circle and a green square", "a green square and a red circle"]),
    4: ("loop.png", (64, 64), [("green", "triangle")], "a green green triangle triangle",
        ["a green triangle", "a small green triangle"]),
    5: ("g5.png", (64, 64), [("orange", "square")], GENERIC, ["an orange square"]),
    6: ("g6.png", (64, 64), [("yellow", "circle")], GENERIC, ["a yellow circle"]),
    7: ("g7.png", (64, 64), [("purple", "triangle")], GENERIC,
        ["a purple triangle", "a small purple triangle"]),
}
_RGB = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 90, 230),
        "yellow": (230, 210, 40), "purple": (150, 70, 200), "orange": (245, 140, 30)}
_SHAPES = ("circle", "square", "triangle")

TRAINING_LOG = """epoch,step,train/loss,val/loss,val/bleu4,val/cider,val/images,lr-Adam
0,9,2.5,,,,,0.001
0,19,2.1,,,,,
0,19,,2.3,0.05,0.10,250,
1,29,nan,,,,,
1,39,1.7,,,,,
1,39,,1.9,0.08,0.20,250,
2,59,1.4,,,,,
2,59,,1.8,0.11,0.31,250,
"""


@dataclass(frozen=True)
class FakeSet:
    results: list[ImageResult]
    instances: Path
    training_log: Path
    train_captions: set[str]


def make_fake_set(root: Path) -> FakeSet:
    """Write the images, instances file and training log under `root`."""
    images_dir = root / "images"
    images_dir.mkdir(parents=True)
    results, annotations = [], []
    for image_id, (name, size, objects, prediction, references) in _IMAGES.items():
        _draw(images_dir / name, size, objects)
        results.append(ImageResult(image_id, images_dir / name, prediction, references))
        annotations += [{"id": len(annotations) + 1, "image_id": image_id,
                         "category_id": _SHAPES.index(shape) + 1, "bbox": [0, 0, 8, 8],
                         "area": 64, "iscrowd": 0, "attributes": {"colour": colour}}
                        for colour, shape in objects]
    instances = root / "instances_test.json"
    instances.write_text(json.dumps({
        "images": [{"id": i, "file_name": v[0], "width": v[1][0], "height": v[1][1]}
                   for i, v in _IMAGES.items()],
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": s, "supercategory": "shape"}
                       for i, s in enumerate(_SHAPES)],
    }))
    training_log = root / "metrics.csv"
    training_log.write_text(TRAINING_LOG)
    return FakeSet(results, instances, training_log, {"A red circle.", "a blue square"})


def _draw(path: Path, size: tuple[int, int], objects: list[tuple[str, str]]) -> None:
    image = Image.new("RGB", size, (20, 20, 30))
    draw = ImageDraw.Draw(image)
    step = size[0] // (len(objects) + 1)
    for index, (colour, shape) in enumerate(objects):
        x, y, r = step * (index + 1), size[1] // 2, min(size) // 6
        box = (x - r, y - r, x + r, y + r)
        if shape == "circle":
            draw.ellipse(box, fill=_RGB[colour])
        elif shape == "square":
            draw.rectangle(box, fill=_RGB[colour])
        else:
            draw.polygon([(x - r, y + r), (x + r, y + r), (x, y - r)], fill=_RGB[colour])
    image.save(path)
