"""The built-in shapes dataset: formats, determinism, caption content, layout, caching."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from helpers.shapes import objects_by_image, parse
from PIL import Image
from pycocotools.coco import COCO

from captioner.data.shapes import (
    COLOURS,
    SHAPES,
    SIZE_WORDS,
    ShapesSpec,
    ensure_shapes,
    generate_shapes,
)
from captioner.data.tokenize import tokenize
from captioner.errors import CaptionerError

SPEC = ShapesSpec(num_train=24, num_val=4, num_test=4, size=128, seed=3)
TINY = ShapesSpec(num_train=4, num_val=2, num_test=2, size=32, seed=1)
RELATIONS = ("to the left of", "to the right of", "above", "below")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_shapes(tmp_path_factory.mktemp("shapes") / "ds", SPEC)


def load(path: Path) -> dict:
    return json.loads(path.read_text())




def articles_agree(caption: str) -> bool:
    words = caption.split()
    return all((word == "an") == (following[0] in "aeiou")
               for word, following in pairwise(words) if word in ("a", "an"))


# pycocotools' annToMask trips a numpy 2 deprecation inside the library, not in our data.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_files_in_coco_and_karpathy_formats(dataset: Path) -> None:
    karpathy = load(dataset / "dataset_shapes.json")
    assert karpathy["dataset"] == "shapes"
    ids = set()
    for split, n in SPEC.split_sizes().items():
        captions = COCO(str(dataset / "annotations" / f"captions_{split}.json"))
        instances = COCO(str(dataset / "annotations" / f"instances_{split}.json"))
        assert len(captions.getImgIds()) == n == len(instances.getImgIds())
        categories = instances.loadCats(instances.getCatIds())
        assert sorted(c["name"] for c in categories) == sorted(SHAPES)
        for image in captions.loadImgs(captions.getImgIds()):
            with Image.open(dataset / "images" / split / image["file_name"]) as im:
                assert im.size == (SPEC.size, SPEC.size) and im.mode == "RGB"
        ann = instances.loadAnns(instances.getAnnIds())[0]
        assert instances.annToMask(ann).sum() > 0
        assert set(ann) >= {"bbox", "area", "iscrowd", "segmentation", "attributes"}
        ids |= set(captions.getImgIds())
    assert len(ids) == sum(SPEC.split_sizes().values())
    entry = karpathy["images"][0]
    assert entry["filepath"] == "images/train" and entry["cocoid"] in ids
    assert (dataset / entry["filepath"] / entry["filename"]).is_file()
    sentence = entry["sentences"][0]
    assert sentence["tokens"] == tokenize(sentence["raw"]) and sentence["imgid"] == entry["imgid"]
    assert entry["sentids"] == [s["sentid"] for s in entry["sentences"]]


def test_same_spec_gives_identical_bytes_and_another_seed_differs(tmp_path: Path) -> None:
    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    first = files(generate_shapes(tmp_path / "a", TINY))
    assert first == files(generate_shapes(tmp_path / "b", TINY))
    other = files(generate_shapes(tmp_path / "c", replace(TINY, seed=2)))
    assert first.keys() == other.keys() and first != other


def test_every_caption_names_every_object_in_varied_phrasings(dataset: Path) -> None:
    phrasings = set()
    for split in SPEC.split_sizes():
        objects = objects_by_image(dataset, split)
        captions = load(dataset / "annotations" / f"captions_{split}.json")["annotations"]
        by_image: dict[int, list[str]] = {}
        for ann in captions:
            by_image.setdefault(ann["image_id"], []).append(ann["caption"])
        assert by_image.keys() == objects.keys()
        for image_id, texts in by_image.items():
            assert len(set(texts)) == 5
            truth = Counter(
                (a["attributes"]["colour"], SHAPES[a["category_id"] - 1]) for a in objects[image_id]
            )
            for text in texts:
                assert text == text.lower()
                assert articles_agree(text), text
                mentioned, phrasing = parse(text)
                assert mentioned == truth, text
                phrasings.add(phrasing)
    assert len(phrasings) >= 4, phrasings


def test_relations_follow_the_dominant_axis_between_centres(dataset: Path) -> None:
    checked = 0
    for split in SPEC.split_sizes():
        objects = objects_by_image(dataset, split)
        for ann in load(dataset / "annotations" / f"captions_{split}.json")["annotations"]:
            relation = next((r for r in RELATIONS if f" {r} " in ann["caption"]), None)
            if relation is None:
                continue
            parts = ann["caption"].split(f" {relation} ")
            (ax, ay), (bx, by) = (centre_of_mentioned(objects[ann["image_id"]], p) for p in parts)
            if abs(ax - bx) >= abs(ay - by):
                expected = "to the left of" if ax < bx else "to the right of"
            else:
                expected = "above" if ay < by else "below"
            assert relation == expected, ann["caption"]
            checked += 1
    assert checked > 0


def centre_of_mentioned(anns: list[dict], text: str) -> tuple[float, float]:
    words = set(text.split())
    named = [a for a in anns if {a["attributes"]["colour"], SHAPES[a["category_id"] - 1]} <= words]
    [(x, y, w, h)] = [a["bbox"] for a in named]
    return x + w / 2, y + h / 2


def test_layout_keeps_margins_gaps_and_sizes(dataset: Path) -> None:
    margin = gap = 4
    for split in SPEC.split_sizes():
        for anns in objects_by_image(dataset, split).values():
            assert 1 <= len(anns) <= 3
            boxes = [a["bbox"] for a in anns]
            for ann, (x, y, w, h) in zip(anns, boxes, strict=True):
                low, high = SIZE_WORDS[ann["attributes"]["size"]]
                assert w == h and low <= w / 2 <= high
                assert x >= margin and y >= margin
                assert x + w <= SPEC.size - margin and y + h <= SPEC.size - margin
            for i, (ax, ay, aw, ah) in enumerate(boxes):
                for bx, by, bw, bh in boxes[i + 1:]:
                    apart = max(bx - (ax + aw), ax - (bx + bw), by - (ay + ah), ay - (by + bh))
                    assert apart >= gap


def test_objects_are_drawn_where_annotated(dataset: Path) -> None:
    coco = COCO(str(dataset / "annotations" / "instances_train.json"))
    for ann in coco.loadAnns(coco.getAnnIds()):
        x, y, w, h = ann["bbox"]
        image = coco.loadImgs(ann["image_id"])[0]
        with Image.open(dataset / "images" / "train" / image["file_name"]) as im:
            # A point inside every shape: low in the box, where even the triangle is wide.
            pixel = np.array(im.getpixel((x + w // 2, y + 3 * h // 4)))
        assert np.abs(pixel - COLOURS[ann["attributes"]["colour"]]).max() <= 15


def test_ensure_shapes_uses_the_cache_env_and_reuses_a_complete_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CAPTIONER_CACHE", str(tmp_path / "cache"))
    root = ensure_shapes(TINY)
    assert root.parent == tmp_path / "cache" / "shapes"
    assert "generating the built-in shapes dataset (8 images)" in capsys.readouterr().err
    stamp = (root / "dataset_shapes.json").stat().st_mtime_ns
    assert ensure_shapes(TINY) == root
    assert capsys.readouterr().err == ""
    assert (root / "dataset_shapes.json").stat().st_mtime_ns == stamp
    elsewhere = tmp_path / "elsewhere"
    assert ensure_shapes(TINY, cache_dir=elsewhere).parent == elsewhere / "shapes"
    assert ensure_shapes(replace(TINY, seed=5)) != root


def test_ensure_shapes_regenerates_an_incomplete_dataset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = ensure_shapes(TINY, cache_dir=tmp_path)
    reference = (root / "annotations" / "captions_train.json").read_bytes()
    (root / "COMPLETE").unlink()
    (root / "annotations" / "captions_train.json").write_text("{")
    capsys.readouterr()
    assert ensure_shapes(TINY, cache_dir=tmp_path) == root
    assert "generating" in capsys.readouterr().err
    assert (root / "annotations" / "captions_train.json").read_bytes() == reference
    assert [p.name for p in tmp_path.joinpath("shapes").iterdir() if p.name != f".{root.name}.lock"] == [
        root.name]  # no build folder left behind


def test_refuses_to_replace_a_folder_that_is_not_a_shapes_dataset(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(CaptionerError, match="not a shapes dataset"):
        generate_shapes(tmp_path / "mine", TINY)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_rewriting_a_dataset_replaces_only_what_the_generator_wrote(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    generate_shapes(out, replace(TINY, num_train=6))
    (out / "notes.txt").write_text("mine")
    (out / "images" / "train" / "my_photo.png").write_bytes(b"mine too")
    generate_shapes(out, TINY)  # fewer training images than before
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "images" / "train" / "my_photo.png").read_bytes() == b"mine too"
    generated = sorted(p.name for p in (out / "images" / "train").glob("shapes_*.png"))
    assert len(generated) == TINY.num_train  # the earlier generation's extra image is gone
    fresh = generate_shapes(tmp_path / "fresh", TINY)
    for name in ("dataset_shapes.json", "COMPLETE", "annotations/captions_train.json"):
        assert (out / name).read_bytes() == (fresh / name).read_bytes()


def test_generation_draws_a_progress_bar_only_on_a_terminal(tmp_path: Path, monkeypatch,
                                                            capsys: pytest.CaptureFixture) -> None:
    import captioner.data.shapes as shapes

    monkeypatch.setattr(shapes, "bars", lambda: True)  # as on a terminal
    generate_shapes(tmp_path / "bar", TINY)
    err = capsys.readouterr().err
    assert "generating shapes" in err and "/8 " in err  # 4 + 2 + 2 images
    monkeypatch.setattr(shapes, "bars", lambda: False)  # piped, or --quiet
    generate_shapes(tmp_path / "plain", TINY)
    assert capsys.readouterr().err == ""


def test_regenerating_never_removes_a_file_outside_the_folder(tmp_path: Path) -> None:
    keep = tmp_path / "keep.txt"
    keep.write_text("a user's file")
    root = generate_shapes(tmp_path / "ds", TINY)
    marker = json.loads((root / "COMPLETE").read_text())
    marker["files"] += [str(keep), "../keep.txt"]  # an edited or corrupted marker
    (root / "COMPLETE").write_text(json.dumps(marker))
    generate_shapes(root, TINY)
    assert keep.read_text() == "a user's file"


def test_a_full_disk_while_generating_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 22 item 20: ENOSPC came out as an OSError traceback."""
    import errno

    from captioner.data import shapes
    from captioner.errors import CaptionerError

    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shapes, "_write_dataset", full)
    with pytest.raises(CaptionerError, match=f"disk full while generating the shapes set in {tmp_path}"):
        shapes.generate_shapes(tmp_path / "s", shapes.ShapesSpec(num_train=2, num_val=1, num_test=1, size=32))
    assert list(tmp_path.iterdir()) == []  # the half-written folder is gone


def test_the_feature_space_check_speaks_in_sensible_units(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 22 item 20: small sizes read "need 0.0 GB, 0.0 GB are free"."""
    import shutil
    from collections import namedtuple

    from captioner.errors import CaptionerError
    from captioner.features import cache

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(10**9, 10**9, 1_500_000))
    with pytest.raises(CaptionerError, match="features need 12.3 MB, 1.5 MB are free"):
        cache._check_space(tmp_path, 12_300_000)
