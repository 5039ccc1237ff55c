"""Feature extraction shared by several processes, interrupted, short of disk; DDP training on CPU.

Threads stand in for ranks in the fast tests: flock locks belong to each open file, so two
threads conflict exactly as two processes do. The slow tests run real processes through the CLI.
"""

from __future__ import annotations

import csv
import fcntl
import os
import shutil
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import wait_until
from helpers.images import random_image_records
from PIL import Image

from captioner.data.shapes import ShapesSpec, generate_shapes
from captioner.errors import CaptionerError, Interrupted
from captioner.features.cache import extract_features, feature_key, load_or_extract, merge_shards
from captioner.model.encoder import build_encoder, build_preprocess

KEY = {"test": 1}
PREPROCESS = build_preprocess("vgg11", 32, 32)


@pytest.fixture(scope="module")
def vgg11() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_encoder("vgg11", "none").eval()


def _together(ranks: threading.Barrier, seen: Counter) -> Callable[[Image.Image], torch.Tensor]:
    """The preprocess, counting per thread; each thread's first image waits there until every
    rank has begun one, so the extractors surely overlap (however the threads are scheduled)."""
    def preprocess(image: Image.Image) -> torch.Tensor:
        if not seen[threading.get_ident()]:
            ranks.wait(60)
        seen[threading.get_ident()] += 1
        return PREPROCESS(image)
    return preprocess


@pytest.mark.slow
def test_ranks_share_the_shards_and_merge_once(tmp_path: Path, vgg11: torch.nn.Module) -> None:
    records, seen = random_image_records(tmp_path, 12), Counter()
    preprocess = _together(threading.Barrier(2), seen)
    key = feature_key(vgg11, preprocess, records, split="val", arch="vgg11", image_size=32,
                      dataset="t", bf16=False)

    def rank(r: int):
        return load_or_extract(vgg11, preprocess, records, tmp_path / "cache", key, rank=r,
                               shard_size=2, world_size=2)

    with ThreadPoolExecutor(2) as pool:
        stores = list(pool.map(rank, (0, 1)))
    assert len(seen) == 2 and sum(seen.values()) == 12  # both worked; no image twice
    assert stores[0].ids == stores[1].ids == [r.image_id for r in records]
    assert np.array_equal(stores[0].array, stores[1].array)
    folder = stores[0].folder
    assert sorted(p.name for p in folder.iterdir()) == ["features.npy", "ids.json", "key.json", "meta.json"]


def _hold(lock: Path):
    f = open(lock, "a")  # held across the test; closing it is the holder finishing or dying
    fcntl.flock(f, fcntl.LOCK_EX)
    return f


def _waiting_on(lock: Path) -> bool:
    """Whether a flock() of this process on `lock` is blocked, waiting for its holder
    (/proc/locks shows a waiter as "->" before its lock: its kind, pid, device:inode)."""
    pid, inode = str(os.getpid()), os.stat(lock).st_ino
    with open("/proc/locks") as locks:
        return any(fields[1:3] == ["->", "FLOCK"] and fields[5] == pid and fields[6].endswith(f":{inode}")
                   for fields in (line.split() for line in locks) if len(fields) > 7)


@pytest.mark.slow  # over a second where bf16 and AVX-512 are missing: out of the fast loop
@pytest.mark.parametrize("holder_finishes", [True, False])
def test_waits_for_a_shard_another_rank_holds(tmp_path: Path, vgg11: torch.nn.Module,
                                              holder_finishes: bool) -> None:
    records, folder = random_image_records(tmp_path, 8), tmp_path / "feat"
    folder.mkdir()
    holder = _hold(folder / "shard_00001.lock")  # "rank 1" is extracting shard 1
    with ThreadPoolExecutor(1) as pool:
        done = pool.submit(extract_features, vgg11, PREPROCESS, records, folder, key=KEY,
                           shard_size=2, rank=0, world_size=2)
        # Blocked on shard 1's lock: its second pass, after its own shards 0, 2, then the free shard 3.
        wait_until(lambda: _waiting_on(folder / "shard_00001.lock") or done.done(), 60,
                   "rank 0 to wait for shard 1's lock")
        assert not done.done() and not (folder / "shard_00001.ids.json").exists()
        assert all((folder / f"shard_0000{k}.ids.json").exists() for k in (0, 2, 3))
        if holder_finishes:
            np.save(folder / "shard_00001.npy", np.zeros((2, 4096), np.float16))
            (folder / "shard_00001.ids.json").write_text("[3, 4]")
        holder.close()  # finished, or died: either way the lock is gone
        assert done.result(timeout=60) == ([0, 2, 3] if holder_finishes else [0, 2, 3, 1])
    store = merge_shards(folder, KEY)
    assert store.ids == list(range(1, 9))
    assert (np.asarray(store.array[2:4]) == 0).all() == holder_finishes  # rank 1's rows kept


def test_ctrl_c_keeps_finished_shards_and_a_rerun_resumes(tmp_path: Path, vgg11: torch.nn.Module) -> None:
    records, folder, calls = random_image_records(tmp_path, 6), tmp_path / "feat", Counter()

    def interrupted(image: Image.Image) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 4:  # the second image of shard 1
            raise KeyboardInterrupt
        return PREPROCESS(image)

    with pytest.raises(Interrupted) as err:
        extract_features(vgg11, interrupted, records, folder, key=KEY, shard_size=2)
    assert str(err.value) == (f"interrupted while extracting features; 2 of 6 images' features are kept "
                              f"in {folder}: run the same command again to continue")
    kept = sorted(p.name for p in folder.glob("shard_*") if p.suffix != ".lock")
    assert kept == ["shard_00000.ids.json", "shard_00000.npy"]
    (folder / ".shard_00001.npy.x1y2z3.tmp").write_bytes(b"half")  # what kill -9 leaves behind
    first = (folder / "shard_00000.npy").stat().st_mtime_ns
    assert extract_features(vgg11, PREPROCESS, records, folder, key=KEY, shard_size=2) == [1, 2]
    assert (folder / "shard_00000.npy").stat().st_mtime_ns == first  # not recomputed
    assert not list(folder.glob(".*.tmp"))
    assert merge_shards(folder, KEY).ids == [1, 2, 3, 4, 5, 6]


def test_too_little_disk_is_a_clear_error_before_any_work(tmp_path: Path, vgg11: torch.nn.Module,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    records = random_image_records(tmp_path, 4)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: SimpleNamespace(free=1000))
    with pytest.raises(CaptionerError, match="kB are free; free some space or set CAPTIONER_CACHE"):
        extract_features(vgg11, PREPROCESS, records, tmp_path / "feat", key=KEY)
    assert not list((tmp_path / "feat").glob("shard_*"))


# -- real processes ---------------------------------------------------------------------------
TINY_FROZEN = [
    "data.dataset=shapes", "data.batch_size=4", "data.min_count=1", "encoder.mode=frozen",
    "encoder.image_size=32", "encoder.resize_size=32", "decoder.embed_dim=32",
    "decoder.hidden_dim=32", "trainer.max_epochs=1", "trainer.log_every_n_steps=1",
    "eval.meteor=false", "eval.batch_size=8", "pretrain.epochs=1",
]
N_VAL = 5  # odd: a 2-rank DistributedSampler pads the validation set with a repeated image


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shapes") / "shapes"
    return generate_shapes(out, ShapesSpec(num_train=16, num_val=N_VAL, num_test=6, size=64))


def _cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "captioner", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_extract_processes_started_together(tmp_path: Path, shapes: Path) -> None:
    env = {**os.environ, "CAPTIONER_CACHE": str(tmp_path / "cache"), "WORLD_SIZE": "2"}
    args = ["extract", "--split", "val", f"data.root={shapes}", *TINY_FROZEN]
    procs = [_cli(*args, cwd=tmp_path, env={**env, "RANK": str(r)}) for r in (0, 1)]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    assert outputs[0][0] == outputs[1][0] and outputs[0][0].startswith(f"val: {N_VAL} images -> ")
    folder = Path(outputs[0][0].split(" -> ")[1].strip())
    assert sorted(p.name for p in folder.iterdir()) == ["features.npy", "ids.json", "key.json", "meta.json"]


@pytest.mark.slow
def test_ddp_on_cpu_counts_each_validation_image_once_in_both_phases(tmp_path: Path, shapes: Path) -> None:
    # Cross-entropy, then a self-critical epoch: the second fit runs in the same two processes.
    env = {**os.environ, "CAPTIONER_CACHE": str(tmp_path / "cache")}
    ddp = ["trainer.strategy=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
    proc = _cli("train", "-v", f"data.root={shapes}", *TINY_FROZEN, *ddp, "scst.epochs=1",
                cwd=tmp_path, env=env)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert "GLOBAL_RANK: 1" in err and "distributed_backend=gloo" in err
    # Rank 0 extracts before Lightning starts rank 1, which finds the cache ready.
    for split in ("train", "val", "test"):
        assert err.count(f"fc7 features of split '{split}'") == 1, split
    assert err.count("\ntraining: lstm decoder") == 1 and err.count("self-critical training: lstm") == 1
    rows = {}
    for run in ("shapes", "shapes-scst"):
        with open(tmp_path / "runs" / run / "logs" / "metrics.csv") as f:
            rows[run] = list(csv.DictReader(f))
        images = [float(row["val/images"]) for row in rows[run] if row["val/images"]]
        assert images == [N_VAL], run  # gathered across ranks, the padding image de-duplicated
    sampled = [row for row in rows["shapes-scst"] if row["train/reward"]]
    assert sampled and all(float(row["train/entropy"]) > 0 for row in sampled)
    assert err.count("evaluated 6 test images") == 2  # each phase's test evaluation, on rank 0 only
    assert "best checkpoint" in out and "runs/shapes-scst" in out


@pytest.mark.slow
def test_ddp_on_cpu_fine_tunes_the_cnn(tmp_path: Path, shapes: Path) -> None:
    # The CNN trains with the decoder on every rank: plain DDP, every weight gets its gradient.
    env = {**os.environ, "CAPTIONER_CACHE": str(tmp_path / "cache")}
    ddp = ["trainer.strategy=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
    tuned = [o for o in TINY_FROZEN if o not in ("encoder.mode=frozen", "trainer.max_epochs=1")]
    proc = _cli("train", "--no-eval", f"data.root={shapes}", *tuned, *ddp, "encoder.mode=finetune",
                "trainer.max_epochs=2", cwd=tmp_path, env=env)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    with open(tmp_path / "runs" / "shapes" / "logs" / "metrics.csv") as f:
        epochs = {row["epoch"] for row in csv.DictReader(f) if row["val/images"]}
    assert epochs == {"0", "1"}
