"""`captioner extract`: the fc7 features of every split a config uses, computed once into the cache.

Training with a frozen encoder reads its features through `split_features` too, and evaluation
through the same cache key, so whichever runs first fills the cache and the others reuse it.
Processes started together (torchrun, srun, DDP ranks) share the work: see captioner.features.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from captioner.config import Config
from captioner.data.prepare import PreparedData, cache_dir
from captioner.errors import CaptionerError
from captioner.features.cache import FeatureStore, load_or_extract
from captioner.model.encoder import VGGEncoder, build_preprocess
from captioner.util.hardware import uses_bf16, wants_cuda


@dataclass
class SplitFeatures:
    split: str
    images: int  # images the split lists; the store lacks the unreadable ones
    store: FeatureStore


def launch_rank() -> tuple[int, int]:
    """(rank, world size) as a launcher announced them, before any process group exists.

    torchrun sets RANK/WORLD_SIZE, srun SLURM_PROCID/SLURM_NTASKS; a process started by hand (or
    Lightning's rank 0, which starts the other ranks only later) is (0, 1). This only decides which
    shards a process takes first: shards are claimed with file locks, so no guess can deadlock.
    """
    for rank, world in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        if rank in os.environ and world in os.environ:
            return int(os.environ[rank]), int(os.environ[world])
    return 0, 1


def extraction_device(accelerator: str) -> torch.device:
    """The device this process trains on: its own GPU (LOCAL_RANK) if training uses GPUs, else the CPU."""
    if not wants_cuda(accelerator):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise CaptionerError(f"trainer.accelerator={accelerator}: CUDA is not available on this machine")
    local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", 0)))
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def split_features(config: Config, data: PreparedData, encoder: VGGEncoder, split: str, *,
                   bf16: bool | None = None) -> FeatureStore:
    """Cached fc7 features of one split, extracted first (on the training device) if missing."""
    c = config.encoder
    device = extraction_device(config.trainer.accelerator)
    rank, world_size = launch_rank()
    return load_or_extract(
        encoder, build_preprocess(c.arch, c.image_size, c.resize_size), data.split(split),
        cache_dir(config), split=split, arch=c.arch, image_size=c.image_size, dataset=str(data.root),
        device=device, batch_size=config.eval.batch_size, num_workers=config.data.num_workers,
        bf16=uses_bf16(config) if bf16 is None else bf16, rank=rank, world_size=world_size,
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
