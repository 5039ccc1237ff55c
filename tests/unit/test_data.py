"""Dataset readers (Karpathy split + COCO JSON via pycocotools) and the training batches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from captioner.config import load_config
from captioner.data.coco import load_records
from captioner.data.datamodule import CaptionSet, collate
from captioner.data.prepare import build_vocab, prepare
from captioner.errors import CaptionerError


def write_coco_style(root: Path) -> None:
    """A 4-image dataset laid out like COCO: train2014/val2014 folders, annotations, Karpathy file."""
    images, annotations, entries = [], [], []
    for n, (folder, split) in enumerate([("train2014", "train"), ("val2014", "restval"),
                                         ("val2014", "val"), ("val2014", "test")]):
        image_id, name = 100 + n, f"COCO_{folder}_{100 + n:012d}.jpg"
        (root / folder).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (48, 32), (40 * n, 80, 120)).save(root / folder / name)
        images.append({"id": image_id, "file_name": name, "width": 48, "height": 32})
        for k in range(5 + (n == 0)):  # COCO images sometimes have 6 captions
            annotations.append({"id": 10 * image_id + k, "image_id": image_id,
                                "caption": f"A photo of thing{n}, take {k}."})
        entries.append({"filepath": folder, "filename": name, "imgid": n, "cocoid": image_id,
                        "split": split, "sentences": [{"raw": "ignored when COCO JSON is given"}]})
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / "captions_all.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "info": {}, "licenses": []}))
    (root / "dataset_coco.json").write_text(json.dumps({"dataset": "coco", "images": entries}))


def test_coco_captions_via_pycocotools_and_karpathy_splits(tmp_path: Path) -> None:
    write_coco_style(tmp_path)
    records = load_records(tmp_path, "dataset_coco.json", ["annotations/captions_all.json"])
    assert [r.split for r in records] == ["train", "restval", "val", "test"]
    assert records[0].path == tmp_path / "train2014" / "COCO_train2014_000000000100.jpg"
    assert len(records[0].captions) == 6 and records[1].captions[0] == "A photo of thing1, take 0."
    fallback = load_records(tmp_path, "dataset_coco.json")  # no COCO JSON: Karpathy sentences
    assert fallback[0].captions == ("ignored when COCO JSON is given",)


def test_prepare_merges_restval_into_train(tmp_path: Path) -> None:
    write_coco_style(tmp_path)
    config = load_config(None, [f"data.root={tmp_path}", "data.dataset=coco",
                                "data.karpathy_json=dataset_coco.json",
                                "data.captions_json=[annotations/captions_all.json]",
                                "data.min_count=1"])
    data = prepare(config)
    assert [r.image_id for r in data.split("train")] == [100, 101]
    assert [r.image_id for r in data.split("test")] == [103]
    vocab = build_vocab(data, min_count=1)
    assert {"a", "photo", "thing0", "thing1"} <= set(vocab.words)
    assert "thing2" not in vocab.words and "thing3" not in vocab.words  # val/test words unseen


@pytest.mark.parametrize(("content", "needle"), [
    (None, "not found"), ("{not json", "not valid JSON"), ('{"images": 3}', "'images' list"),
    ('{"images": [{"split": "train"}]}', "malformed"),
])
def test_bad_split_files_are_one_line_errors(tmp_path: Path, content: str | None, needle: str) -> None:
    if content is not None:
        (tmp_path / "dataset_coco.json").write_text(content)
    with pytest.raises(CaptionerError, match=needle):
        load_records(tmp_path, "dataset_coco.json")


def test_missing_root_and_bad_caption_file(tmp_path: Path) -> None:
    with pytest.raises(CaptionerError, match="data.root"):
        prepare(load_config(None, [f"data.root={tmp_path / 'nope'}", "data.dataset=coco"]))
    write_coco_style(tmp_path)
    (tmp_path / "annotations" / "bad.json").write_text('{"annotations": []}')
    with pytest.raises(CaptionerError, match="bad.json"):
        load_records(tmp_path, "dataset_coco.json", ["annotations/bad.json"])


def test_batches_carry_several_captions_per_image(tmp_path: Path) -> None:
    write_coco_style(tmp_path)
    records = load_records(tmp_path, "dataset_coco.json", ["annotations/captions_all.json"])
    from captioner.data.tokenize import tokenize
    from captioner.data.vocab import Vocabulary

    vocab = Vocabulary.build([tokenize(c) for r in records for c in r.captions], min_count=1)
    dataset = CaptionSet(records, lambda r: torch.full((2,), float(r.image_id)), vocab,
                         max_length=4, captions_per_image=3, training=False)
    batch = collate([dataset[0], dataset[1]], pad=vocab.pad)
    assert batch["captions"].shape == (2, 3, 6)  # <start> + 4 words + <end>
    assert (batch["captions"][:, :, 0] == vocab.start).all()
    assert batch["input"][:, 0].tolist() == [100.0, 101.0]
    assert len(batch["references"][0]) == 6
    # Validation takes each image's first captions, every epoch the same ones.
    assert collate([dataset[0]], pad=vocab.pad)["captions"].equal(batch["captions"][:1])
    assert collate([None, None], pad=0) is None
    training = CaptionSet(records, lambda r: torch.full((2,), float(r.image_id)), vocab,
                          max_length=4, captions_per_image=3, training=True)
    assert "references" not in collate([training[0]], pad=vocab.pad)  # only validation scores them


def test_by_caption_items_cover_every_caption_once(tmp_path: Path) -> None:
    write_coco_style(tmp_path)
    records = load_records(tmp_path, "dataset_coco.json", ["annotations/captions_all.json"])
    from captioner.data.datamodule import CaptionDataModule
    from captioner.data.tokenize import tokenize
    from captioner.data.vocab import Vocabulary

    vocab = Vocabulary.build([tokenize(c) for r in records for c in r.captions], min_count=1)
    dataset = CaptionSet(records, lambda r: torch.full((2,), float(r.image_id)), vocab,
                         max_length=20, captions_per_image=3, training=True, by_caption=True)
    n_captions = sum(len(r.captions) for r in records)
    assert len(dataset) == n_captions > len(records)
    items = [dataset[k] for k in range(len(dataset))]
    assert all(len(item["captions"]) == 1 for item in items)
    seen = sorted((item["image_id"], tuple(item["captions"][0])) for item in items)
    every = sorted((r.image_id, tuple(vocab.encode(tokenize(c), 20))) for r in records for c in r.captions)
    assert seen == every
    # A batch holds as many captions as an image-major one (batch_size x captions_per_image).
    loader = CaptionDataModule(dataset, dataset, batch_size=2, num_workers=0).train_dataloader()
    assert next(iter(loader))["captions"].shape[:2] == (6, 1)
