"""Shared fixtures: a private cache, a tiny shapes dataset, and one real tiny training run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captioner.data.coco import ImageRecord

# Tiny but real: the real VGG architecture, the real Lightning Trainer, real pycocotools.
TINY = [
    "data.shapes.num_train=16", "data.shapes.num_val=6", "data.shapes.num_test=6",
    "data.shapes.size=64", "data.batch_size=8", "data.min_count=1",
    "encoder.image_size=32", "encoder.resize_size=32", "decoder.embed_dim=32",
    "decoder.hidden_dim=32", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
    "eval.meteor=false", "eval.batch_size=8", "pretrain.epochs=1",
]


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tests never read or write the user's cache."""
    cache = tmp_path_factory.mktemp("cache")
    os.environ["CAPTIONER_CACHE"] = str(cache)
    return cache


def run_cli(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """`captioner ...` in a fresh process, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "captioner", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=os.environ.copy())


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, private_cache: Path) -> Path:
    """One `captioner train` on the tiny set (fine-tuned VGG11-BN + LSTM): returns its workdir."""
    workdir = tmp_path_factory.mktemp("work")
    result = run_cli("train", *TINY, cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


@pytest.fixture(scope="session")
def best(trained_run: Path) -> Path:
    """The tiny training run's best checkpoint."""
    return trained_run / "runs" / "shapes" / "checkpoints" / "best.ckpt"


def random_image_records(folder: Path, n: int) -> list[ImageRecord]:
    """n small random PNGs in `folder`, as val-split records with ids 1..n."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
        records.append(ImageRecord(i + 1, path, "val", ("a caption",)))
    return records


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Whatever needs the tiny training run is slow (the run itself takes ~15 s): the fast loop,
    `pytest -m "not slow"`, leaves it out."""
    for item in items:
        if "trained_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
