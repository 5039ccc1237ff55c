"""Datasets and the LightningDataModule: items by image while the CNN trains, by caption after.

While a fine-tuned CNN trains, each training item holds `captions_per_image` captions of one
image, so the CNN runs once per image rather than once per caption (the way self-critical.pytorch
batches COCO). Once image features are cheap (cached fc7 of a frozen encoder, or remembered after
encoder.freeze_after_epoch) each item is one caption, and a batch holds as many captions as
before but from as many different images: a less correlated gradient for the same work. On the
shapes default this raised fresh-scene pair-F1 from 0.81 to 0.84 (two seeds each) for the same
decoder-only training time (README, "The built-in dataset and the default model").
Inputs are either cached fc7 features (frozen encoder) or preprocessed images (fine-tuning).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from functools import partial

import lightning as L
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from captioner.concepts import concept_targets
from captioner.data.coco import ImageRecord
from captioner.data.tokenize import tokenize
from captioner.data.vocab import Vocabulary
from captioner.errors import CaptionerError
from captioner.features import FeatureStore
from captioner.images import open_rgb

Inputs = Callable[[ImageRecord], Tensor]


def image_inputs(preprocess: Callable[[Image.Image], Tensor]) -> Inputs:
    return lambda record: preprocess(open_rgb(record.path))


def feature_inputs(store: FeatureStore) -> Inputs:
    return lambda record: store[record.image_id]


class CaptionSet(Dataset):
    """(input, encoded captions, tokenised references) per image, or per caption (`by_caption`)."""

    def __init__(self, records: Sequence[ImageRecord], inputs: Inputs, vocab: Vocabulary,
                 max_length: int, captions_per_image: int, concepts: Sequence[str] = (),
                 concept_window: int = 2, by_caption: bool = False) -> None:
        self.records, self.inputs, self.per_image = list(records), inputs, captions_per_image
        # False once the model remembers every image's features (CaptionModule.features): items
        # then carry no input, which skips decoding images that would not be looked at.
        self.load_inputs = True
        self.references = [[tokenize(c) for c in r.captions] for r in self.records]
        self.encoded = [[vocab.encode(t, max_length) for t in refs] for refs in self.references]
        # (image, caption) of each item when by caption: every caption once per epoch.
        self._captions = [(i, j) for i, encoded in enumerate(self.encoded) for j in range(len(encoded))]
        self.by_caption = by_caption
        self.pad = vocab.pad
        # Targets of the auxiliary concept loss (captioner.concepts), from all of an image's captions.
        self.concepts = ([concept_targets(refs, concepts, vocab, concept_window)
                          for refs in self.references]
                         if concepts else None)

    def __len__(self) -> int:
        return len(self._captions) if self.by_caption else len(self.records)

    @property
    def batch_scale(self) -> int:
        """Items per image in a batch: a batch of data.batch_size images' worth holds this many
        items per image (captions_per_image when items are captions), so steps keep their size."""
        return self.per_image if self.by_caption else 1

    @property
    def image_ids(self) -> list[int]:
        return [r.image_id for r in self.records]

    def _pick(self, i: int) -> list[list[int]]:
        encoded = self.encoded[i]
        if len(encoded) >= self.per_image:
            order = torch.randperm(len(encoded))[: self.per_image]
        else:  # fewer captions than slots: sample with replacement
            order = torch.randint(len(encoded), (self.per_image,))
        return [encoded[j] for j in order.tolist()]

    def __getitem__(self, k: int) -> dict | None:
        i, j = self._captions[k] if self.by_caption else (k, None)
        record = self.records[i]
        try:
            x = self.inputs(record) if self.load_inputs else None
        except CaptionerError as err:
            print(f"skipping unreadable image: {err}", file=sys.stderr)
            return None
        captions = [self.encoded[i][j]] if j is not None else self._pick(i)
        item = {"image_id": record.image_id, "input": x, "captions": captions,
                "references": self.references[i]}
        if self.concepts is not None:
            item["concepts"] = self.concepts[i]
        return item


def collate(items: list[dict | None], pad: int) -> dict | None:
    items = [item for item in items if item is not None]
    if not items:
        return None
    longest = max(len(c) for item in items for c in item["captions"])
    captions = torch.full((len(items), len(items[0]["captions"]), longest), pad, dtype=torch.long)
    for b, item in enumerate(items):
        for s, ids in enumerate(item["captions"]):
            captions[b, s, : len(ids)] = torch.tensor(ids)
    batch = {
        "image_id": torch.tensor([item["image_id"] for item in items]),
        "input": None if items[0]["input"] is None else torch.stack([item["input"] for item in items]),
        "captions": captions,  # [B, captions_per_image, T]
        "references": [item["references"] for item in items],
    }
    if "concepts" in items[0]:
        batch["concepts"] = torch.stack([item["concepts"] for item in items])  # [B, C]
    return batch


class CaptionDataModule(L.LightningDataModule):
    def __init__(self, train: CaptionSet, val: CaptionSet, *, batch_size: int, num_workers: int):
        super().__init__()
        self.train_set, self.val_set = train, val
        self.batch_size, self.num_workers = batch_size, num_workers

    def _loader(self, dataset: CaptionSet, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset, batch_size=self.batch_size * dataset.batch_scale, shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=partial(collate, pad=dataset.pad),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        # Lightning swaps in a DistributedSampler under DDP; evaluation de-duplicates its padding.
        return self._loader(self.val_set, shuffle=False)

