"""The feature cache: fc7 vectors computed once per (dataset, split, encoder, image size).

Features are stored as float16 in a memory-mapped .npy with an id index, so COCO's 123k x 4096
features (1 GB) are read lazily. Extraction writes shards that survive a crash or Ctrl-C: a
rerun skips finished shards. The cache key holds a fingerprint of the encoder's weights and of
the image files, so a changed encoder or dataset rebuilds the cache instead of reusing it.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from captioner import atomic
from captioner.data.coco import ImageRecord
from captioner.encoder import FEATURE_DIM, VGGEncoder, encode
from captioner.errors import CaptionerError
from captioner.images import open_rgb

FORMAT_VERSION = 1


def encoder_fingerprint(encoder: VGGEncoder) -> str:
    """A hash of every weight: two encoders share cached features only if they are identical."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in encoder.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def records_fingerprint(records: Sequence[ImageRecord]) -> str:
    """Ids, paths, sizes and modification times of the images (cheap, and catches edits)."""
    digest = hashlib.blake2b(digest_size=16)
    for r in records:
        stat = r.path.stat() if r.path.exists() else None
        digest.update(f"{r.image_id}|{r.path}|{stat and stat.st_size}|{stat and stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


@dataclass
class FeatureStore:
    """float16 features [N, 4096] (memory-mapped) and the image id of each row."""

    ids: list[int]
    array: np.ndarray

    def __post_init__(self) -> None:
        self.row = {image_id: i for i, image_id in enumerate(self.ids)}

    def __getitem__(self, image_id: int) -> Tensor:
        return torch.from_numpy(np.asarray(self.array[self.row[image_id]], dtype=np.float32))

    @classmethod
    def open(cls, folder: Path) -> FeatureStore:
        ids = json.loads((folder / "ids.json").read_text())
        return cls(ids, np.load(folder / "features.npy", mmap_mode="r"))


class _ImageFiles(Dataset):
    def __init__(self, records: Sequence[ImageRecord], preprocess: Callable[[Image.Image], Tensor]):
        self.records, self.preprocess = records, preprocess

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[int, Tensor | None, str | None]:
        try:
            return i, self.preprocess(open_rgb(self.records[i].path)), None
        except CaptionerError as err:
            return i, None, str(err)


def _collate(items: list[tuple[int, Tensor | None, str | None]]):
    good = [(i, x) for i, x, _ in items if x is not None]
    bad = [(i, e) for i, x, e in items if x is None]
    images = torch.stack([x for _, x in good]) if good else None
    return [i for i, _ in good], images, bad


def _extract_shard(
    encoder: VGGEncoder, loader: DataLoader, records: Sequence[ImageRecord], bf16: bool,
    progress: tqdm,
) -> tuple[list[int], np.ndarray]:
    ids, rows = [], []
    for indices, images, bad in loader:
        for _, message in bad:
            tqdm.write(f"skipping unreadable image: {message}", file=sys.stderr)
        if images is not None:
            rows.append(encode(encoder, images, bf16).to(torch.float16).cpu().numpy())
            ids.extend(records[i].image_id for i in indices)
        progress.update(len(indices) + len(bad))
    array = np.concatenate(rows) if rows else np.zeros((0, FEATURE_DIM), np.float16)
    return ids, array


def extract_features(
    encoder: VGGEncoder,
    preprocess: Callable[[Image.Image], Tensor],
    records: Sequence[ImageRecord],
    folder: Path,
    *,
    key: dict,
    batch_size: int = 64,
    num_workers: int = 0,
    bf16: bool = False,
    shard_size: int = 4096,
    rank: int = 0,
    world_size: int = 1,
    desc: str = "extracting features",
) -> None:
    """Write this rank's shards of `records` into `folder`, skipping shards already written."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic.write_json(folder / "key.json", key)
    encoder.eval()
    shards = range(rank, (len(records) + shard_size - 1) // shard_size, world_size)
    todo = [k for k in shards if not (folder / f"shard_{k:05d}.ids.json").exists()]
    total = sum(len(records[k * shard_size:(k + 1) * shard_size]) for k in todo)
    with tqdm(total=total, desc=desc, unit="img", file=sys.stderr, disable=total == 0) as progress:
        for k in todo:
            part = records[k * shard_size:(k + 1) * shard_size]
            loader = DataLoader(_ImageFiles(part, preprocess), batch_size=batch_size,
                                num_workers=num_workers, collate_fn=_collate)
            ids, array = _extract_shard(encoder, loader, part, bf16, progress)
            with atomic.atomic_path(folder / f"shard_{k:05d}.npy") as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, array)
            # The id file is written last: its presence marks the shard as finished.
            atomic.write_json(folder / f"shard_{k:05d}.ids.json", ids, indent=None)


def merge_shards(folder: Path, key: dict) -> FeatureStore:
    """Concatenate finished shards into features.npy + ids.json; meta.json marks the cache valid."""
    id_files = sorted(folder.glob("shard_*.ids.json"))
    ids = [i for f in id_files for i in json.loads(f.read_text())]
    with atomic.atomic_path(folder / "features.npy") as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(len(ids), FEATURE_DIM))
        start = 0
        for f in id_files:
            shard = np.load(f.with_name(f.name.replace(".ids.json", ".npy")))
            out[start:start + len(shard)] = shard
            start += len(shard)
        out.flush()
        del out
    atomic.write_json(folder / "ids.json", ids, indent=None)
    atomic.write_json(folder / "meta.json", key)
    for f in id_files:
        f.with_name(f.name.replace(".ids.json", ".npy")).unlink()
        f.unlink()
    return FeatureStore.open(folder)


def cached_store(folder: Path, key: dict) -> FeatureStore | None:
    """The finished cache in `folder` if it was built for exactly this key, else None."""
    meta = folder / "meta.json"
    if meta.exists() and json.loads(meta.read_text()) == key:
        return FeatureStore.open(folder)
    return None


def feature_folder(cache_dir: Path, key: dict) -> Path:
    name = hashlib.blake2b(json.dumps(key, sort_keys=True).encode(), digest_size=8).hexdigest()
    return cache_dir / "features" / f"{key['split']}-{key['arch']}-{key['image_size']}px-{name}"


def load_or_extract(
    encoder: VGGEncoder,
    preprocess: Callable[[Image.Image], Tensor],
    records: Sequence[ImageRecord],
    cache_dir: Path,
    *,
    split: str,
    arch: str,
    image_size: int,
    dataset: str,
    **extract_options,
) -> FeatureStore:
    """Features for `records` from the cache, extracting (and caching) them first if needed."""
    key = {
        "version": FORMAT_VERSION, "dataset": dataset, "split": split, "arch": arch,
        "image_size": image_size, "encoder": encoder_fingerprint(encoder),
        "images": records_fingerprint(records), "count": len(records),
    }
    folder = feature_folder(cache_dir, key)
    store = cached_store(folder, key)
    if store is not None:
        return store
    extract_features(encoder, preprocess, records, folder, key=key, desc=f"features {split}",
                     **extract_options)
    return merge_shards(folder, key)
