"""The built-in "shapes" dataset: synthetic scenes written in COCO's own formats.

It lets `captioner train` run offline, in minutes, through the same readers as COCO: images
under `images/<split>/`, COCO captions and instances files under `annotations/`, and a
Karpathy-split `dataset_shapes.json`. Every file is a pure function of the ShapesSpec, so the
same spec gives byte-identical output and the cache folder can be named by a hash of it.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import math
import os
import shutil
import sys
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from captioner.config import ShapesConfig
from captioner.data.tokenize import tokenize
from captioner.errors import CaptionerError, Interrupted
from captioner.util.atomic import write_json
from captioner.util.console import bars, say
from captioner.util.locks import flock
from captioner.util.paths import default_cache_dir

# Bump whenever the output for a given spec changes, so cached datasets are regenerated.
GENERATOR_VERSION = 1

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 230),
    "yellow": (230, 210, 40),
    "purple": (150, 70, 200),
    "orange": (245, 140, 30),
}
SHAPES = ("circle", "square", "triangle")
# Size word -> half-extent range in pixels (inclusive) on a 128 px canvas.
SIZE_WORDS: dict[str, tuple[int, int]] = {"small": (8, 12), "large": (16, 22)}
# Count -> the word captions use when same colour+shape objects are grouped ("four" and "five"
# only occur in scenes of more than three objects, data.shapes.max_objects).
NUMBER_WORDS: dict[int, str] = {2: "two", 3: "three", 4: "four", 5: "five"}
SPLITS = ("train", "val", "test")
KARPATHY_FILE = "dataset_shapes.json"

_REFERENCE_SIZE = 128
IN_FLIGHT = 64  # rendered images waiting for a PNG-encoding thread at most
_MARGIN_PX = 4
_GAP_PX = 4
# The specification's 1-3 objects per image. A spec at this count leaves max_objects out of its
# files and cache key, so its data files and cache key are those written before the setting existed.
_STANDARD_MAX_OBJECTS = 3
_COLOUR_JITTER = 15
_MAX_BACKGROUND = 60
_MAX_NOISE_SIGMA = 6.0
# Chance that a further object repeats an earlier one's colour and shape: without it, groups
# ("two red circles") would be too rare to learn number words from.
_REPEAT_P = 0.2
_PLACEMENT_TRIES = 50
_CAPTIONS_PER_IMAGE = 5
_SIZE_WORD_P = 0.5
_CIRCLE_POLYGON_POINTS = 24
_COMPLETE = "COMPLETE"
_LICENSES = [{"id": 1, "name": "CC0 1.0 (generated data)",
              "url": "https://creativecommons.org/publicdomain/zero/1.0/"}]

# Phrasings; {x} is the list of every object ("a red circle and two blue squares").
_LISTING_TEMPLATES = (
    "{x}",
    "there {be} {x}",
    "an image with {x}",
    "a picture of {x}",
    "{x} on a dark background",
    "a dark background with {x}",
)
# Two-object phrasings; {rel} is where {a}'s centre lies relative to {b}'s.
_RELATION_TEMPLATES = (
    "{a} {rel} {b}",
    "{a} is {rel} {b}",
    "there is {a} {rel} {b}",
)


_DEFAULT = ShapesConfig()  # data.shapes' defaults: the one place the sizes are set


@dataclass(frozen=True)
class ShapesSpec:
    """Everything the generated files depend on (besides GENERATOR_VERSION)."""

    num_train: int = _DEFAULT.num_train
    num_val: int = _DEFAULT.num_val
    num_test: int = _DEFAULT.num_test
    size: int = _DEFAULT.size
    seed: int = _DEFAULT.seed
    max_objects: int = _DEFAULT.max_objects

    def __post_init__(self) -> None:
        if min(self.num_train, self.num_val, self.num_test) < 0:
            raise CaptionerError(f"shapes: split sizes must be >= 0, got {self}")
        if not 1 <= self.max_objects <= max(NUMBER_WORDS):
            raise CaptionerError(f"shapes: max_objects must be between 1 and {max(NUMBER_WORDS)} "
                                 f"(the largest group with a number word), got {self.max_objects}")
        # Below this, three large objects with their gaps no longer fit reliably.
        if self.size < 32:
            raise CaptionerError(f"shapes: image size must be >= 32 px, got {self.size}")

    def split_sizes(self) -> dict[str, int]:
        return {"train": self.num_train, "val": self.num_val, "test": self.num_test}

    def recorded(self) -> dict[str, int]:
        """The spec as the files and the cache key record it (see _STANDARD_MAX_OBJECTS)."""
        fields = asdict(self)
        if self.max_objects == _STANDARD_MAX_OBJECTS:
            del fields["max_objects"]
        return fields


@dataclass(frozen=True)
class _Object:
    colour: str
    shape: str
    size: str
    x: int  # top-left corner of the square bounding box, pixel-edge coordinates
    y: int
    side: int

    def centre(self) -> tuple[float, float]:
        return self.x + self.side / 2, self.y + self.side / 2


def ensure_shapes(spec: ShapesSpec, cache_dir: Path | None = None) -> Path:
    """The cached dataset folder for `spec`, generated first if missing or incomplete."""
    out_dir = Path(cache_dir or default_cache_dir()) / "shapes" / _spec_hash(spec)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with flock(out_dir.with_name(f".{out_dir.name}.lock"), wait=True):  # DDP ranks, parallel runs
        if not (out_dir / _COMPLETE).is_file():
            total = sum(spec.split_sizes().values())
            say(f"generating the built-in shapes dataset ({total} images) into {out_dir}")
            generate_shapes(out_dir, spec)
    return out_dir


def generate_shapes(out_dir: Path, spec: ShapesSpec) -> Path:
    """Write the whole dataset to `out_dir`, replacing only the files an earlier generation wrote.

    Built beside the target first; the COMPLETE marker goes last, so an interrupted run leaves a
    folder that reads as incomplete (and is regenerated), never a half dataset that passes as whole.
    """
    out_dir = Path(out_dir)
    check_replaceable(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        _write_new(tmp, spec)
        if out_dir.exists():
            _replace_generated(tmp, out_dir)
        else:
            tmp.rename(out_dir)
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        raise CaptionerError(f"disk full while generating the shapes set in {out_dir.parent}; free "
                             "some space (or set CAPTIONER_CACHE elsewhere) and run it again") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _write_new(tmp: Path, spec: ShapesSpec) -> None:
    """_write_dataset, with Ctrl-C said as what it leaves: nothing (the caller removes `tmp`)."""
    try:
        _write_dataset(tmp, spec)
    except KeyboardInterrupt:
        raise Interrupted("interrupted while generating the shapes dataset; nothing of it was kept: "
                          "run the same command again to generate it afresh") from None


def _spec_hash(spec: ShapesSpec) -> str:
    key = json.dumps({"generator_version": GENERATOR_VERSION, **spec.recorded()}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def check_replaceable(out_dir: Path) -> None:
    """Refuse a target that is a file, or a folder holding anything but an earlier shapes set."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise CaptionerError(f"shapes: {out_dir} exists and is not a folder")
    looks_like_shapes = (out_dir / _COMPLETE).exists() or (out_dir / KARPATHY_FILE).exists()
    if any(out_dir.iterdir()) and not looks_like_shapes:
        raise CaptionerError(f"shapes: refusing to write into {out_dir}: not a shapes dataset")


def _replace_generated(new: Path, out_dir: Path) -> None:
    """Remove what the previous generation wrote into out_dir, then move the new files in."""
    old = _generated_files(out_dir)
    (out_dir / _COMPLETE).unlink(missing_ok=True)  # from here on the folder reads as incomplete
    for path in old:
        path.unlink(missing_ok=True)
    for path in sorted(p for p in new.rglob("*") if p.is_file() and p.name != _COMPLETE):
        target = out_dir / path.relative_to(new)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
    os.replace(new / _COMPLETE, out_dir / _COMPLETE)


def _generated_files(out_dir: Path) -> list[Path]:
    """The files an earlier generation wrote: listed in its marker, or (markers of version 1 list
    none) those named as this generator names them."""
    marker = out_dir / _COMPLETE
    if marker.is_file():
        try:
            listed = json.loads(marker.read_text(encoding="utf-8")).get("files")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            listed = None
        if isinstance(listed, list):
            # Only names inside the folder: an edited marker must not reach a user's files.
            return [out_dir / name for name in listed if isinstance(name, str) and ".." not in name
                    and not Path(name).is_absolute()]
    files = [out_dir / KARPATHY_FILE]
    for split in SPLITS:
        files += [out_dir / "annotations" / f"{kind}_{split}.json" for kind in ("captions", "instances")]
        files += sorted((out_dir / "images" / split).glob(f"shapes_{split}_*.png"))
    return files


def _write_dataset(root: Path, spec: ShapesSpec) -> None:
    karpathy: list[dict[str, Any]] = []
    categories = [{"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(SHAPES)]
    ids = {"image": 1, "caption": 1, "instance": 1}
    bar = tqdm(total=sum(spec.split_sizes().values()), desc="generating shapes", unit="image",
               file=sys.stderr, disable=not bars(), leave=False)  # a terminal's progress bar
    # PNG encoding (zlib, which lets go of the GIL) runs in threads beside the drawing and the
    # captions; the files are the same as written in order. At most IN_FLIGHT images wait for
    # their thread, so a large set is not held in memory.
    with ThreadPoolExecutor(max_workers=2) as pool:
        for split_index, (split, count) in enumerate(spec.split_sizes().items()):
            (root / "images" / split).mkdir(parents=True)
            images, captions, instances, saves = [], [], [], deque()
            for index in range(count):
                # One generator per image: any image can be reproduced without generating the rest.
                rng = np.random.default_rng([spec.seed, split_index, index])
                objects = _sample_objects(rng, spec.size, spec.max_objects)
                file_name = f"shapes_{split}_{ids['image']:06d}.png"
                if len(saves) >= IN_FLIGHT:
                    saves.popleft().result()  # a failed write (a full disk) fails the generation here
                saves.append(pool.submit(_render(rng, objects, spec.size).save,
                                         root / "images" / split / file_name, format="PNG", compress_level=6))
                images.append({"id": ids["image"], "file_name": file_name, "width": spec.size,
                               "height": spec.size})
                karpathy.append(_annotate(rng, objects, split, file_name, len(karpathy), ids,
                                          captions, instances))
                bar.update()
            for save in saves:
                save.result()
            header = {"info": _info(spec), "licenses": _LICENSES, "images": images}
            _write_compact(root / "annotations" / f"captions_{split}.json",
                           {**header, "annotations": captions})
            _write_compact(root / "annotations" / f"instances_{split}.json",
                           {**header, "annotations": instances, "categories": categories})
    bar.close()
    _write_compact(root / KARPATHY_FILE, {"dataset": "shapes", "images": karpathy})
    # Written last: its presence says the folder is complete, and it lists what was generated.
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    write_json(root / _COMPLETE, {"generator_version": GENERATOR_VERSION, "spec": spec.recorded(),
                                  "files": files})


def _annotate(rng: np.random.Generator, objects: list[_Object], split: str, file_name: str, imgid: int,
              ids: dict[str, int], captions: list[dict], instances: list[dict]) -> dict[str, Any]:
    """One image's captions and instances (appended, with running ids), and its Karpathy entry."""
    image_id, sentences = ids["image"], []
    for caption in _captions(rng, objects):
        captions.append({"image_id": image_id, "id": ids["caption"], "caption": caption})
        sentences.append({"tokens": _tokens(caption), "raw": caption, "imgid": imgid,
                          "sentid": ids["caption"]})
        ids["caption"] += 1
    for obj in objects:
        instances.append(_instance(obj, ids["instance"], image_id))
        ids["instance"] += 1
    ids["image"] += 1
    return {"filepath": f"images/{split}", "filename": file_name, "imgid": imgid, "cocoid": image_id,
            "split": split, "sentids": [s["sentid"] for s in sentences], "sentences": sentences}


@functools.lru_cache(maxsize=65536)
def _tokens_cached(caption: str) -> tuple[str, ...]:
    return tuple(tokenize(caption))


def _tokens(caption: str) -> list[str]:
    """tokenize(caption), once per distinct caption: the templates repeat them thousands of times."""
    return list(_tokens_cached(caption))


def _info(spec: ShapesSpec) -> dict[str, Any]:
    return {
        "description": "captioner built-in shapes dataset",
        "version": str(GENERATOR_VERSION),
        "contributor": "captioner",
        "spec": spec.recorded(),
    }


def _write_compact(path: Path, obj: Any) -> None:
    write_json(path, obj, indent=None)


def _scaled(px: float, size: int) -> int:
    return max(1, round(px * size / _REFERENCE_SIZE))


def _sample_objects(rng: np.random.Generator, size: int, max_objects: int) -> list[_Object]:
    count = int(rng.integers(1, max_objects + 1))
    while True:  # rarely more than one pass: a crowded scene is resampled from scratch
        objects: list[_Object] = []
        for _ in range(count):
            obj = _place(rng, size, objects)
            if obj is None:
                break
            objects.append(obj)
        if len(objects) == count:
            return objects


def _place(rng: np.random.Generator, size: int, placed: list[_Object]) -> _Object | None:
    if placed and rng.random() < _REPEAT_P:
        model = placed[int(rng.integers(len(placed)))]
        colour, shape = model.colour, model.shape
    else:
        colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
    size_word = list(SIZE_WORDS)[int(rng.integers(len(SIZE_WORDS)))]
    low, high = SIZE_WORDS[size_word]
    side = 2 * int(rng.integers(_scaled(low, size), _scaled(high, size) + 1))
    margin, gap = _scaled(_MARGIN_PX, size), _scaled(_GAP_PX, size)
    for _ in range(_PLACEMENT_TRIES):
        x, y = (int(v) for v in rng.integers(margin, size - margin - side + 1, size=2))
        obj = _Object(colour, shape, size_word, x, y, side)
        if all(_separation(obj, other) >= gap for other in placed):
            return obj
    return None


def _separation(a: _Object, b: _Object) -> int:
    """Empty pixels between two boxes along the axis where they are apart (negative: overlap)."""
    return max(b.x - (a.x + a.side), a.x - (b.x + b.side),
               b.y - (a.y + a.side), a.y - (b.y + b.side))


def _render(rng: np.random.Generator, objects: list[_Object], size: int) -> Image.Image:
    background = rng.integers(0, _MAX_BACKGROUND + 1, size=3)
    sigma = rng.uniform(0.0, _MAX_NOISE_SIGMA)
    # float32 noise, computed in place: about half of the whole generator's time otherwise.
    pixels = rng.standard_normal(size=(size, size, 3), dtype=np.float32)
    pixels *= sigma
    pixels += background.astype(np.float32)
    np.clip(np.rint(pixels, out=pixels), 0, 255, out=pixels)
    image = Image.fromarray(pixels.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for obj in objects:
        jitter = rng.integers(-_COLOUR_JITTER, _COLOUR_JITTER + 1, size=3)
        fill = tuple(int(c) for c in np.clip(np.add(COLOURS[obj.colour], jitter), 0, 255))
        # ImageDraw boxes are inclusive pixel ranges: the last pixel is at x + side - 1.
        x1, y1 = obj.x + obj.side - 1, obj.y + obj.side - 1
        if obj.shape == "circle":
            draw.ellipse((obj.x, obj.y, x1, y1), fill=fill)
        elif obj.shape == "square":
            draw.rectangle((obj.x, obj.y, x1, y1), fill=fill)
        else:
            draw.polygon([(obj.x, y1), (x1, y1), ((obj.x + x1) / 2, obj.y)], fill=fill)
    return image


def _instance(obj: _Object, instance_id: int, image_id: int) -> dict[str, Any]:
    x, y, s = obj.x, obj.y, obj.side
    if obj.shape == "circle":
        r = s / 2
        angles = np.linspace(0, 2 * math.pi, _CIRCLE_POLYGON_POINTS, endpoint=False)
        polygon = [round(v, 2) for a in angles
                   for v in (x + r + r * math.cos(a), y + r + r * math.sin(a))]
        area = math.pi * r * r
    elif obj.shape == "square":
        polygon = [x, y, x + s, y, x + s, y + s, x, y + s]
        area = s * s
    else:
        polygon = [x, y + s, x + s, y + s, x + s / 2, y]
        area = s * s / 2
    return {
        "id": instance_id,
        "image_id": image_id,
        "category_id": SHAPES.index(obj.shape) + 1,
        "bbox": [x, y, s, s],
        "area": round(area, 2),
        "iscrowd": 0,
        "segmentation": [polygon],
        "attributes": {"colour": obj.colour, "size": obj.size},
    }


def _captions(rng: np.random.Generator, objects: list[_Object]) -> list[str]:
    kinds = {(o.colour, o.shape) for o in objects}
    templates = list(_LISTING_TEMPLATES)
    # A relation between two identical objects ("a red circle above a red circle") reads badly.
    if len(objects) == 2 and len(kinds) == 2:
        templates += _RELATION_TEMPLATES
    chosen = rng.choice(len(templates), size=_CAPTIONS_PER_IMAGE, replace=False)
    return [_fill(templates[int(i)], rng, objects) for i in chosen]


def _fill(template: str, rng: np.random.Generator, objects: list[_Object]) -> str:
    with_size = bool(rng.random() < _SIZE_WORD_P)
    if "{rel}" in template:
        a, b = objects if rng.random() < 0.5 else objects[::-1]
        return template.format(a=_phrase(a.colour, a.shape, [a.size], with_size),
                               rel=_relation(a, b),
                               b=_phrase(b.colour, b.shape, [b.size], with_size))
    groups: dict[tuple[str, str], list[str]] = {}
    for obj in objects:
        groups.setdefault((obj.colour, obj.shape), []).append(obj.size)
    phrases = [_phrase(c, s, sizes, with_size) for (c, s), sizes in groups.items()]
    phrases = [phrases[int(i)] for i in rng.permutation(len(phrases))]
    be = "are" if phrases[0].split()[0] in NUMBER_WORDS.values() else "is"
    listing = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return template.format(x=listing, be=be)


def _phrase(colour: str, shape: str, sizes: list[str], with_size: bool) -> str:
    """A noun phrase: "a small red circle", "an orange triangle", "two red circles"."""
    words = [sizes[0]] if with_size and len(set(sizes)) == 1 else []
    words += [colour, shape if len(sizes) == 1 else shape + "s"]
    if len(sizes) > 1:
        determiner = NUMBER_WORDS[len(sizes)]
    else:
        determiner = "an" if words[0][0] in "aeiou" else "a"
    return " ".join([determiner, *words])


def _relation(a: _Object, b: _Object) -> str:
    """Where a's centre lies relative to b's, along the axis where they are further apart."""
    (ax, ay), (bx, by) = a.centre(), b.centre()
    if abs(ax - bx) >= abs(ay - by):
        return "to the left of" if ax < bx else "to the right of"
    return "above" if ay < by else "below"
