"""`captioner extract`: the fc7 features of every split a config uses, computed once into the cache.

Training with a frozen encoder and evaluation read their features through `split_features` too,
under the key `split_key` builds, so whichever runs first fills the cache and the others reuse it.
Processes started together (torchrun, srun, DDP ranks) share the work: see captioner.features.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from captioner.config import Config
from captioner.data.coco import ImageRecord
from captioner.data.prepare import PreparedData, cache_dir
from captioner.errors import CaptionerError
from captioner.features.cache import FeatureKey, FeatureStore, feature_key, load_or_extract
from captioner.model.encoder import VGGEncoder, build_preprocess
from captioner.util.hardware import training_device, uses_bf16
from captioner.util.launch import launch


@dataclass
class SplitFeatures:
    split: str
    images: int  # images the split lists; the store lacks the unreadable ones
    store: FeatureStore


def split_key(config: Config, data: PreparedData, encoder: VGGEncoder, split: str,
              records: Sequence[ImageRecord]) -> FeatureKey:
    """The cache key of a split's features under this config: the one place that decides it, for
    training, `captioner extract` and evaluation alike. The precision is the run's (bf16 where
    the config's training runs under bf16 autocast), whichever device reads the features later:
    evaluation then finds the features training or extraction cached."""
    c = config.encoder
    return feature_key(encoder, build_preprocess(c.arch, c.image_size, c.resize_size), records,
                       dataset=str(data.root), split=split, arch=c.arch, image_size=c.image_size,
                       bf16=uses_bf16(config))


def split_features(config: Config, data: PreparedData, encoder: VGGEncoder, split: str, *,
                   records: Sequence[ImageRecord] | None = None,
                   device: torch.device | None = None) -> FeatureStore:
    """Cached fc7 features of one split (or of `records` of it), extracted first if missing: on
    `device`, by default this process's training device."""
    c = config.encoder
    records = data.split(split) if records is None else records
    key = split_key(config, data, encoder, split, records)
    # Processes launched together take their own shards first (file locks decide, so no launch
    # fact read wrong can deadlock; Lightning starts ranks 1.. after rank 0 extracted everything).
    where = launch()
    return load_or_extract(
        encoder, build_preprocess(c.arch, c.image_size, c.resize_size), records, cache_dir(config),
        key, device=device or training_device(config), batch_size=config.eval.batch_size,
        num_workers=config.data.num_workers, rank=where.rank, world_size=where.world_size,
    )


def extract(config: Config, data: PreparedData, encoder: VGGEncoder,
            splits: Sequence[str] | None = None) -> list[SplitFeatures]:
    """Features of `splits` (default: training, validation and evaluation splits) in the cache."""
    if config.encoder.mode != "frozen":
        raise CaptionerError("encoder.mode is 'finetune': training computes features as it goes; "
                             "cached features serve encoder.mode=frozen")
    encoder = encoder.to(memory_format=torch.channels_last)
    results = []
    for split in dict.fromkeys(splits or ("train", "val", config.eval.split)):
        store = split_features(config, data, encoder, split)
        results.append(SplitFeatures(split, len(data.split(split)), store))
    return results
