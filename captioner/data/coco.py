"""Reading COCO-style datasets: Karpathy's split file, with captions from COCO JSON (pycocotools).

Karpathy's `dataset_coco.json` says which image belongs to train/restval/val/test and where it
lies (`filepath`/`filename`). Captions come from COCO's own annotation files read with
pycocotools when they are given, else from the split file's `sentences`.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from captioner.errors import CaptionerError
from captioner.util.console import say


@dataclass(frozen=True)
class ImageRecord:
    image_id: int
    path: Path
    split: str
    captions: tuple[str, ...]


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise CaptionerError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CaptionerError(f"{path}: not valid JSON ({err})") from err


def coco_captions(files: Sequence[Path]) -> dict[int, list[str]]:
    """image id -> captions, from COCO caption annotation files read with pycocotools."""
    from pycocotools.coco import COCO

    captions: dict[int, list[str]] = {}
    for path in files:
        _read_json(path, "COCO caption file")  # a clear error before pycocotools' own
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints timings
                coco = COCO(str(path))
            found = {int(i): [a["caption"] for a in anns] for i, anns in coco.imgToAnns.items()}
        except (KeyError, TypeError, AssertionError) as err:
            raise CaptionerError(f"{path}: not a COCO caption file (missing {err})") from err
        if not found:
            raise CaptionerError(f"{path}: not a COCO caption file (no caption annotations)")
        for image_id, texts in found.items():
            captions.setdefault(image_id, []).extend(texts)
    return captions


def load_records(root: Path, karpathy_json: str, captions_json: Sequence[str] = ()) -> list[ImageRecord]:
    """Every image of a Karpathy-format split file, with its path, split and reference captions."""
    split_file = root / karpathy_json
    data = _read_json(split_file, "Karpathy split file")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise CaptionerError(f"{split_file}: expected an object with an 'images' list")
    from_coco = coco_captions([root / f for f in captions_json]) if captions_json else None
    records, missing = [], 0
    for n, image in enumerate(data["images"]):
        try:
            image_id = int(image.get("cocoid", image.get("imgid", n)))
            path = root / image.get("filepath", "") / image["filename"]
            split = image["split"]
            captions = (from_coco.get(image_id, []) if from_coco is not None
                        else [s["raw"] for s in image.get("sentences", [])])
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise CaptionerError(f"{split_file}: image entry {n} is malformed ({err!r})") from err
        if not captions:
            missing += 1
            continue
        records.append(ImageRecord(image_id, path, split, tuple(captions)))
    if missing:
        say(f"note: {missing} images in {split_file.name} have no captions and are skipped")
    if not records:
        raise CaptionerError(f"{split_file}: no images with captions")
    return records


def select_split(records: Sequence[ImageRecord], splits: Sequence[str]) -> list[ImageRecord]:
    return [r for r in records if r.split in splits]


def split_sizes(records: Sequence[ImageRecord]) -> dict[str, int]:
    return dict(Counter(r.split for r in records))
