"""The feature cache: fc7 vectors computed once per (dataset, split, encoder, image size).

Features are stored as float16 in a memory-mapped .npy with an id index, so COCO's 123k x 4096
features (1 GB) are read lazily. The cache key holds a fingerprint of the encoder's weights and of
the image files, so a changed encoder or dataset rebuilds the cache instead of reusing it.

Extraction writes shards of `shard_size` images into the key's folder; a shard's id file is written
last and marks it finished, so a rerun after a crash or Ctrl-C skips finished shards. Several
processes (DDP ranks, nodes sharing a file system) fill one folder together:

    each shard k:  flock shard_k.lock ──► extract ──► shard_k.npy, shard_k.ids.json ──► unlock
    all finished:  flock merge.lock ──► first holder writes features.npy, ids.json, meta.json (last)

A process takes its own shards (k % world == rank) first, then any shard nobody holds, then waits
for the shards others hold. The kernel drops the lock of a process that dies, so a waiting process
takes over its shard: nobody waits for a rank that crashed or has not started yet (Lightning's
launcher starts ranks 1.. only once rank 0 reaches `fit`, after its extraction).
"""

from __future__ import annotations

import errno
import hashlib
import json
import re
import shutil
import sys
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from captioner.data.coco import ImageRecord
from captioner.data.images import open_rgb
from captioner.errors import CaptionerError, Interrupted
from captioner.model.encoder import FEATURE_DIM, VGGEncoder, encode
from captioner.util import atomic
from captioner.util.console import bars, say
from captioner.util.locks import flock
from captioner.util.torch_api import version_counter

FORMAT_VERSION = 2
ROW_BYTES = FEATURE_DIM * 2  # float16


def encoder_fingerprint(encoder: VGGEncoder) -> str:
    """A hash of every weight: two encoders share cached features only if they are identical.

    Remembered per encoder while no weight changes (each in-place update moves a tensor's version
    counter), so a run that looks up three splits hashes VGG's half gigabyte once.
    """
    state = encoder.state_dict()
    versions = tuple((t.data_ptr(), version_counter(t)) for t in state.values())
    known = _fingerprints.get(encoder)
    if known is not None and known[0] == versions and all(v is not None for _, v in versions):
        return known[1]
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in state.items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    _fingerprints[encoder] = (versions, digest.hexdigest())
    return digest.hexdigest()


_fingerprints: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


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
    folder: Path | None = None

    def __post_init__(self) -> None:
        self.row = {image_id: i for i, image_id in enumerate(self.ids)}

    def __getitem__(self, image_id: int) -> Tensor:
        return torch.from_numpy(np.asarray(self.array[self.row[image_id]], dtype=np.float32))

    def of(self, record: ImageRecord) -> Tensor:
        """The fc7 vector of a record's image: a dataset's inputs (captioner.data.datamodule)."""
        return self[record.image_id]

    @classmethod
    def open(cls, folder: Path) -> FeatureStore:
        ids = json.loads((folder / "ids.json").read_text())
        return cls(ids, np.load(folder / "features.npy", mmap_mode="r"), folder)


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


def _shard(folder: Path, k: int, suffix: str) -> Path:
    return folder / f"shard_{k:05d}{suffix}"


def _finished(folder: Path, k: int) -> bool:
    return _shard(folder, k, ".ids.json").exists()


def _merged(folder: Path) -> bool:
    """Another process merged every shard already (and deleted them)."""
    return (folder / "meta.json").exists()


def _write_shard(
    encoder: VGGEncoder, loader: DataLoader, part: Sequence[ImageRecord], folder: Path, k: int,
    bf16: bool, progress: tqdm,
) -> None:
    for stale in folder.glob(f".shard_{k:05d}.*.tmp"):  # left by a killed run; only k's holder writes these
        stale.unlink(missing_ok=True)
    ids, rows = [], []
    for indices, images, bad in loader:
        for _, message in bad:
            tqdm.write(f"skipping unreadable image: {message}", file=sys.stderr)
        if images is not None:
            rows.append(encode(encoder, images, bf16).to(torch.float16).cpu().numpy())
            ids.extend(part[i].image_id for i in indices)
        progress.update(len(indices) + len(bad))
    array = np.concatenate(rows) if rows else np.zeros((0, FEATURE_DIM), np.float16)
    with atomic.atomic_path(_shard(folder, k, ".npy")) as tmp, open(tmp, "wb") as f:
        np.save(f, array)
    # The id file is written last: its presence marks the shard as finished.
    atomic.write_json(_shard(folder, k, ".ids.json"), ids, indent=None)


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
) -> list[int]:
    """Finish every shard of `records` in `folder`, sharing the work with any other process doing so.

    Returns the shards this process computed; on return every shard is finished (or merged).
    """
    folder.mkdir(parents=True, exist_ok=True)
    atomic.write_json(folder / "key.json", key)  # says what a half-built folder is for
    n_shards = -(-len(records) // shard_size)
    own = [k for k in range(n_shards) if k % world_size == rank]
    order = own + [k for k in range(n_shards) if k % world_size != rank]
    parts = [records[k * shard_size:(k + 1) * shard_size] for k in range(n_shards)]
    finished = sum(_finished(folder, k) for k in range(n_shards))
    if finished:
        say(f"resuming: {finished} of {n_shards} shards already done in {folder}")
    pending = sum(len(parts[k]) for k in range(n_shards) if not _finished(folder, k))
    _check_space(folder, (pending + len(records)) * ROW_BYTES)  # the shards, then their merged copy
    encoder.eval()
    pin = next(encoder.parameters()).device.type == "cuda"
    done: list[int] = []
    total = sum(len(parts[k]) for k in own if not _finished(folder, k))
    with tqdm(total=total, desc=desc, unit="img", file=sys.stderr, dynamic_ncols=True,
              disable=not bars()) as progress, _interrupt_says_what_is_kept(folder, parts):
        for k in _claimed(folder, order):
            if k not in own:
                progress.total += len(parts[k])
                progress.refresh()
            # A generator of its own: extracting draws nothing from the global random stream, so
            # a run that finds its features cached trains exactly like one that extracted them.
            loader = DataLoader(_ImageFiles(parts[k], preprocess), batch_size=batch_size,
                                num_workers=num_workers, collate_fn=_collate, pin_memory=pin,
                                generator=torch.Generator())
            _write_shard(encoder, loader, parts[k], folder, k, bf16, progress)
            done.append(k)
    return done


@contextmanager
def _interrupt_says_what_is_kept(folder: Path, parts: Sequence[Sequence[ImageRecord]]) -> Iterator[None]:
    """Ctrl-C during extraction, as Interrupted counting the images whose shards are finished."""
    try:
        yield
    except KeyboardInterrupt:
        kept = sum(len(part) for k, part in enumerate(parts) if _finished(folder, k))
        total = sum(len(part) for part in parts)
        raise Interrupted(f"interrupted while extracting features; {kept} of {total} images' features "
                          f"are kept in {folder}: run the same command again to continue") from None


def _claimed(folder: Path, order: Sequence[int]) -> Iterator[int]:
    """Each shard this process is to extract, its lock held until the next one is asked for.

    First pass: every shard nobody holds, in `order`. Second pass: wait for the shards other
    processes hold, and take over any that a process left unfinished when it died.
    """
    for wait in (False, True):
        for k in order:
            if _finished(folder, k) or _merged(folder):
                continue
            with flock(_shard(folder, k, ".lock"), wait=wait) as locked:
                if locked and not _finished(folder, k) and not _merged(folder):
                    yield k


def _check_space(folder: Path, need: int) -> None:
    free = shutil.disk_usage(folder).free
    if free < need:
        raise CaptionerError(f"{folder}: features need {_size(need)}, {_size(free)} are free; "
                             "free some space or set CAPTIONER_CACHE to a larger disk")


def _size(n: int) -> str:
    """Bytes in the largest unit that keeps a digit before the point: 12.3 MB, 1.5 GB."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def merge_shards(folder: Path, key: dict) -> FeatureStore:
    """Concatenate finished shards into features.npy + ids.json; meta.json marks the cache valid."""
    id_files = sorted(folder.glob("shard_*.ids.json"))
    ids = [i for f in id_files for i in json.loads(f.read_text())]
    if len(set(ids)) != len(ids):
        raise CaptionerError(f"{folder}: shards repeat image ids; delete the folder and extract again")
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
    for lock in folder.glob("*.lock"):  # whoever still waits on one finds meta.json and stops
        lock.unlink(missing_ok=True)
    return FeatureStore.open(folder)


def cached_store(folder: Path, key: dict) -> FeatureStore | None:
    """The finished cache in `folder` if it was built for exactly this key, else None."""
    meta = folder / "meta.json"
    if meta.exists() and json.loads(meta.read_text()) == key:
        return FeatureStore.open(folder)
    return None


def _describe(preprocess: Callable[[Image.Image], Tensor]) -> str:
    """The preprocessing as its repr says it (torchvision's names resize, crop and normalisation),
    on one line, without the memory addresses a plain function's repr holds."""
    return re.sub(r" at 0x[0-9a-f]+", "", " ".join(repr(preprocess).split()))


@dataclass(frozen=True)
class FeatureKey:
    """Everything that changes the numbers of a split's cached features: the encoder's weights,
    the preprocessing (its repr names the resize, the crop and the normalisation), the precision,
    and the images. Built by `feature_key` alone; meta.json holds it, so a folder is reused only
    for exactly this key."""

    dataset: str
    split: str
    arch: str
    image_size: int
    transforms: str
    precision: str  # "bf16" or "fp32"
    encoder: str  # encoder_fingerprint
    images: str  # records_fingerprint
    count: int
    version: int = FORMAT_VERSION

    @property
    def bf16(self) -> bool:
        return self.precision == "bf16"

    def to_json(self) -> dict:
        """The dict meta.json and key.json hold (the folder's name hashes it too)."""
        return {"version": self.version, "dataset": self.dataset, "split": self.split,
                "arch": self.arch, "image_size": self.image_size, "transforms": self.transforms,
                "precision": self.precision, "encoder": self.encoder, "images": self.images,
                "count": self.count}


def feature_key(encoder: VGGEncoder, preprocess: Callable[[Image.Image], Tensor],
                records: Sequence[ImageRecord], *, dataset: str, split: str, arch: str,
                image_size: int, bf16: bool) -> FeatureKey:
    """The cache key of `records`' features computed by `encoder` after `preprocess`."""
    return FeatureKey(dataset=dataset, split=split, arch=arch, image_size=image_size,
                      transforms=_describe(preprocess), precision="bf16" if bf16 else "fp32",
                      encoder=encoder_fingerprint(encoder), images=records_fingerprint(records),
                      count=len(records))


def feature_folder(cache_dir: Path, key: dict) -> Path:
    name = hashlib.blake2b(json.dumps(key, sort_keys=True).encode(), digest_size=8).hexdigest()
    return cache_dir / "features" / f"{key['split']}-{key['arch']}-{key['image_size']}px-{name}"


def load_or_extract(
    encoder: VGGEncoder,
    preprocess: Callable[[Image.Image], Tensor],
    records: Sequence[ImageRecord],
    cache_dir: Path,
    key: FeatureKey,
    *,
    device: torch.device | None = None,
    **extract_options,
) -> FeatureStore:
    """Features for `records` from the cache under `key` (feature_key of the same encoder,
    preprocessing and records), extracting (on `device`) and caching them first if needed."""
    meta = key.to_json()
    folder = feature_folder(cache_dir, meta)
    store = cached_store(folder, meta)
    if store is not None:
        return store
    home = next(encoder.parameters()).device
    device = device or home
    say(f"extracting {key.arch} fc7 features of split {key.split!r}: {len(records)} images, "
        f"{key.image_size}px, on {device} in {key.precision} -> {folder}")
    try:
        extract_features(encoder.to(device), preprocess, records, folder, key=meta, bf16=key.bf16,
                         desc=f"features {key.split}", **extract_options)
        with flock(folder / "merge.lock", wait=True):
            store = cached_store(folder, meta)
            store = store if store is not None else merge_shards(folder, meta)
            # Finished: a process that came late may have created the lock anew; whoever still
            # waits on the old one finds meta.json.
            (folder / "merge.lock").unlink(missing_ok=True)
            return store
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        raise CaptionerError(f"disk full while writing features into {folder}; finished shards are "
                             "kept: free some space and run the command again to resume") from err
    finally:
        encoder.to(home)
