"""Datasets and the LightningDataModule: one item per image, carrying several of its captions.

Each training item holds `captions_per_image` captions of one image, so a fine-tuned CNN runs
once per image rather than once per caption (the way self-critical.pytorch batches COCO).
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
    """(input, encoded captions, tokenised references) per image."""

    def __init__(self, records: Sequence[ImageRecord], inputs: Inputs, vocab: Vocabulary,
                 max_length: int, captions_per_image: int, concepts: Sequence[str] = (),
                 concept_window: int = 2) -> None:
        self.records, self.inputs, self.per_image = list(records), inputs, captions_per_image
        # False once the model remembers every image's features (CaptionModule.features): items
        # then carry no input, which skips decoding images that would not be looked at.
        self.load_inputs = True
        self.references = [[tokenize(c) for c in r.captions] for r in self.records]
        self.encoded = [[vocab.encode(t, max_length) for t in refs] for refs in self.references]
        self.pad = vocab.pad
        # Targets of the auxiliary concept loss (captioner.concepts), from all of an image's captions.
        self.concepts = ([concept_targets(refs, concepts, vocab, concept_window)
                          for refs in self.references]
                         if concepts else None)

    def __len__(self) -> int:
        return len(self.records)

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

    def __getitem__(self, i: int) -> dict | None:
        record = self.records[i]
        try:
            x = self.inputs(record) if self.load_inputs else None
        except CaptionerError as err:
            print(f"skipping unreadable image: {err}", file=sys.stderr)
            return None
        item = {"image_id": record.image_id, "input": x, "captions": self._pick(i),
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
            dataset, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
            collate_fn=partial(collate, pad=dataset.pad),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        # Lightning swaps in a DistributedSampler under DDP; evaluation de-duplicates its padding.
        return self._loader(self.val_set, shuffle=False)

