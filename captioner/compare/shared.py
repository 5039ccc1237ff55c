"""What every cell of a comparison trains and is measured on, built once: the vocabulary, the
caption sets on cached features, the test split, the long captions for the gradient
measurements, and the objects of each image where instances files list them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from captioner.config import Config
from captioner.data.coco import ImageRecord
from captioner.data.datamodule import CaptionSet
from captioner.data.prepare import PreparedData
from captioner.data.tokenize import tokenize
from captioner.data.vocab import Vocabulary
from captioner.evaluation.mentions import ObjectIndex, load_object_index
from captioner.features.cache import FeatureStore
from captioner.features.extract import split_features
from captioner.model.encoder import VGGEncoder

# The fixed batch for the gradient measurements: the longest validation captions.
GRAD_CAPTIONS = 32


@dataclass
class Shared:
    vocab: Vocabulary
    train_set: CaptionSet
    val_set: CaptionSet
    test_records: list[ImageRecord]
    test_store: FeatureStore
    grad_features: Tensor  # [N, 4096]: the images of the long captions
    grad_ids: Tensor  # [N, T + 1]: <start> w1 .. wT, cut to a common length
    objects: ObjectIndex | None  # the objects of each image, where instances files list them


def _features(config: Config, data: PreparedData, encoder: VGGEncoder,
              split: str) -> tuple[list[ImageRecord], FeatureStore]:
    store = split_features(config, data, encoder, split)
    return [r for r in data.split(split) if r.image_id in store.row], store


def long_captions(records: Sequence[ImageRecord], store: FeatureStore, vocab: Vocabulary,
                  max_length: int, count: int = GRAD_CAPTIONS) -> tuple[Tensor, Tensor]:
    """The `count` longest captions, cut to the shortest of them: features [N, F], ids [N, T+1]."""
    encoded = [(vocab.encode(tokenize(c), max_length), r.image_id) for r in records for c in r.captions]
    encoded = sorted(encoded, key=lambda item: -len(item[0]))[:count]  # stable: ties keep file order
    length = min(len(ids) for ids, _ in encoded)
    return (torch.stack([store[image_id] for _, image_id in encoded]),
            torch.tensor([ids[:length] for ids, _ in encoded]))


def share(config: Config, data: PreparedData, encoder: VGGEncoder, vocab: Vocabulary) -> Shared:
    splits = {split: _features(config, data, encoder, split) for split in ("train", "val", "test")}
    d = config.data

    def caption_set(split: str) -> CaptionSet:
        # As `captioner train` on frozen features: training batches by caption, validation by image.
        records, store = splits[split]
        train = split == "train"
        return CaptionSet(records, store.of, vocab, d.max_length, d.captions_per_image,
                          training=train, by_caption=train, tokens=data.tokens)

    train_set, val_set = caption_set("train"), caption_set("val")
    grad_features, grad_ids = long_captions(*splits["val"], vocab, d.max_length)
    objects = load_object_index(data.instances) if data.instances else None
    return Shared(vocab, train_set, val_set, *splits["test"], grad_features, grad_ids, objects)
