"""Datasets and the LightningDataModule: training items by image or by caption.

While a fine-tuned CNN trains, each training item holds `captions_per_image` captions of one
image, so the CNN runs once per image rather than once per caption (the way self-critical.pytorch
batches COCO). On cached fc7 features (encoder.mode=frozen) an item is one caption, and a batch
holds as many captions as it would by image, from as many different images: a less correlated
gradient for the same work. Validation items are images with their first captions, always the
same ones, so the validation loss is comparable from epoch to epoch.

The training order comes from the DataModule's own random generator, whose state travels in
every checkpoint: a resumed run sees the batches the interrupted one would have seen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import lightning as L
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from captioner.data.coco import ImageRecord
from captioner.data.images import open_rgb
from captioner.data.tokenize import tokenize
from captioner.data.vocab import Vocabulary
from captioner.errors import CaptionerError
from captioner.util.console import say

Inputs = Callable[[ImageRecord], Tensor]


def image_inputs(preprocess: Callable[[Image.Image], Tensor]) -> Inputs:
    return lambda record: preprocess(open_rgb(record.path))


class CaptionSet(Dataset):
    """Training items (input, encoded captions) per image or per caption (`by_caption`), or
    validation items per image, which also carry the tokenised references for BLEU and CIDEr.

    A training image item draws its captions at random; a validation item takes its first ones.
    Training items carry no references: Lightning walks every batch's contents on each step, and
    thousands of word strings per batch cost more than the decoder's step on cached features.
    """

    def __init__(self, records: Sequence[ImageRecord], inputs: Inputs, vocab: Vocabulary,
                 max_length: int, captions_per_image: int, *, training: bool, by_caption: bool = False,
                 tokens: Callable[[ImageRecord], list[list[str]]] | None = None) -> None:
        self.records, self.inputs, self.per_image = list(records), inputs, captions_per_image
        tokens = tokens or (lambda record: [tokenize(c) for c in record.captions])
        references = [tokens(r) for r in self.records]
        self.references = None if training else references
        self.encoded = [[vocab.encode(t, max_length) for t in refs] for refs in references]
        # (image, caption) of each item when by caption: every caption once per epoch.
        self._captions = [(i, j) for i, encoded in enumerate(self.encoded) for j in range(len(encoded))]
        self.by_caption, self.training = by_caption, training
        self.pad = vocab.pad

    def __len__(self) -> int:
        return len(self._captions) if self.by_caption else len(self.records)

    @property
    def batch_scale(self) -> int:
        """Items per image in a batch: a batch of data.batch_size images' worth holds this many
        items per image (captions_per_image when items are captions), so steps keep their size."""
        return self.per_image if self.by_caption else 1

    def _pick(self, i: int) -> list[list[int]]:
        encoded = self.encoded[i]
        if not self.training:
            order = [j % len(encoded) for j in range(self.per_image)]
        elif len(encoded) >= self.per_image:
            order = torch.randperm(len(encoded))[: self.per_image].tolist()
        else:  # fewer captions than slots: sample with replacement
            order = torch.randint(len(encoded), (self.per_image,)).tolist()
        return [encoded[j] for j in order]

    def __getitem__(self, k: int) -> dict | None:
        i, j = self._captions[k] if self.by_caption else (k, None)
        record = self.records[i]
        try:
            x = self.inputs(record)
        except CaptionerError as err:
            say(f"skipping unreadable image: {err}")
            return None
        captions = [self.encoded[i][j]] if j is not None else self._pick(i)
        item = {"image_id": record.image_id, "input": x, "captions": captions}
        if self.references is not None:
            item["references"] = self.references[i]
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
        "input": torch.stack([item["input"] for item in items]),
        "captions": captions,  # [B, captions_per_image, T]
    }
    if "references" in items[0]:
        batch["references"] = [item["references"] for item in items]
    return batch


class CaptionDataModule(L.LightningDataModule):
    def __init__(self, train: CaptionSet, val: CaptionSet, *, batch_size: int, num_workers: int,
                 seed: int = 0) -> None:
        super().__init__()
        self.train_set, self.val_set = train, val
        self.batch_size, self.num_workers = batch_size, num_workers
        self.generator = torch.Generator().manual_seed(seed)

    def _loader(self, dataset: CaptionSet, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset, batch_size=self.batch_size * dataset.batch_scale, shuffle=shuffle,
            num_workers=self.num_workers, collate_fn=partial(collate, pad=dataset.pad),
            # Training workers start afresh each epoch, seeded from the generator, so a resumed
            # run's workers draw what the interrupted run's would have.
            generator=self.generator if shuffle else None,
            persistent_workers=self.num_workers > 0 and not shuffle,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        # Lightning swaps in a DistributedSampler under DDP; evaluation de-duplicates its padding.
        return self._loader(self.val_set, shuffle=False)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
