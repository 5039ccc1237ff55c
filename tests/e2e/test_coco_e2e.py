"""COCO end to end through the CLI, as a user runs it: download -> extract -> train -> evaluate.

The four archives carry COCO's real names and layouts (tests/coco_fixture.py) and come from a
loopback server; the config is the real configs/coco_vgg16_lstm.yaml, shrunk by overrides only.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO
from helpers.cli import run_cli
from helpers.coco import build_coco_archives, serve_directory

CONFIG = str(REPO / "configs" / "coco_vgg16_lstm.yaml")
N_TRAIN, N_VAL = 12, 9  # Karpathy split: val2014 -> 3 val, 3 test, 3 restval; train = 12 + 3
SMALL = [
    "encoder.weights=none", "encoder.arch=vgg11", "encoder.image_size=32", "encoder.resize_size=36",
    "data.min_count=1", "data.batch_size=4", "data.num_workers=0", "decoder.hidden_dim=32",
    "decoder.embed_dim=32", "trainer.max_epochs=1", "trainer.log_every_n_steps=1", "eval.meteor=false",
]


def _meta_times(cache: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in (cache / "features").glob("*/meta.json")}


@pytest.mark.slow
def test_download_extract_train_evaluate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache, root, work = tmp_path / "cache", tmp_path / "coco", tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("CAPTIONER_CACHE", str(cache))  # run_cli passes os.environ on
    zips = build_coco_archives(tmp_path / "zips", n_train=N_TRAIN, n_val=N_VAL)
    # The miniature archives are not the official ones: their sums replace the pinned ones.
    sums = tmp_path / "SHA256SUMS"
    sums.write_text("".join(f"{name} {path.stat().st_size} {hashlib.sha256(path.read_bytes()).hexdigest()}\n"
                            for name, path in zips.items()))
    with serve_directory(tmp_path / "zips") as url:
        download = subprocess.run(
            [sys.executable, str(REPO / "data_scripts" / "download_coco.py"), "--root", str(root),
             "--mirror", url, "--checksums", str(sums)], capture_output=True, text=True, timeout=120,
            env=os.environ.copy())
    assert download.returncode == 0, download.stderr[-3000:]
    overrides = [f"data.root={root}", *SMALL]

    extract = run_cli("extract", "--config", CONFIG, *overrides, cwd=work)
    assert extract.returncode == 0, extract.stderr[-3000:]
    counts = {line.split(":")[0]: int(line.split()[1]) for line in extract.stdout.splitlines()}
    assert counts == {"train": N_TRAIN + 3, "val": 3, "test": 3}
    assert extract.stderr.count("extracting vgg11 fc7 features") == 3
    extracted = _meta_times(cache)
    assert len(extracted) == 3 and not list((cache / "features").glob("*/shard_*"))

    train = run_cli("train", "--config", CONFIG, *overrides, cwd=work)
    assert train.returncode == 0, train.stderr[-3000:]
    assert "extracting" not in train.stderr  # the same encoder and images: the cache is reused
    assert _meta_times(cache) == extracted
    run = work / "runs" / "coco_vgg16_lstm"
    assert (run / "checkpoints" / "best.ckpt").is_file()
    header = (run / "logs" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val/cider", "val/bleu4", "train/loss"} <= set(header)
    assert "CIDEr-D" in train.stdout and (run / "eval-test" / "index.html").is_file()

    evaluate = run_cli("evaluate", "--out", str(tmp_path / "report"), cwd=work)
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    assert "extracting" not in evaluate.stderr and _meta_times(cache) == extracted
    assert "BLEU-4" in evaluate.stdout
    predictions = json.loads((tmp_path / "report" / "predictions.json").read_text())
    assert len(predictions) == 3
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["run"]["beam_size"] == 3 and metrics["run"]["split"] == "test"
