"""captioner pretrain: a VGG trained as a classifier of the dataset's objects, saved without its
classifier for encoder.weights=PATH, cached for encoder.weights=pretrain, resumable."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TINY, run_cli

from captioner.data.shapes import ShapesSpec, generate_shapes
from captioner.model.encoder import build_encoder
from captioner.training.pretrain import Targets

PRETRAIN = [o for o in TINY if not o.startswith("pretrain.")]


def test_targets_are_objects_and_optionally_counts() -> None:
    labels = [["red circle", "red circle", "blue square"], ["blue square"]]
    assert Targets.build(labels, counts=False).names == ["blue square", "red circle"]
    targets = Targets.build(labels, counts=True)
    assert targets.names == ["blue square", "red circle", "red circle x2+"]
    assert targets.encode(labels[0]).tolist() == [1.0, 1.0, 1.0]
    assert targets.encode(["red circle", "green triangle"]).tolist() == [0.0, 1.0, 0.0]  # unseen: no column


@pytest.mark.slow
def test_pretrain_saves_an_encoder_that_train_loads_and_resumes(tmp_path: Path) -> None:
    result = run_cli("pretrain", *PRETRAIN, "pretrain.epochs=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    weights = tmp_path / "runs" / "shapes-pretrain" / "encoder.pth"
    assert f"encoder.weights={weights}" in result.stdout
    saved = torch.load(weights, weights_only=True)
    assert not any(k.startswith("classifier.6.") for k in saved["state_dict"])  # the classifier is gone
    assert saved["captioner"]["arch"] == "vgg11_bn" and "val_f1" in saved["captioner"]
    encoder = build_encoder("vgg11_bn", str(weights))
    assert torch.equal(encoder.features[0].weight, saved["state_dict"]["features.0.weight"])

    last = tmp_path / "runs" / "shapes-pretrain" / "checkpoints" / "last.ckpt"
    resumed = run_cli("pretrain", "--resume", str(last), "pretrain.epochs=2", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert torch.load(last, weights_only=True)["epoch"] == 1

    trained = run_cli("train", *TINY, f"encoder.weights={weights}", "--no-eval", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "pretraining" not in trained.stderr  # a given file is used as it is


def test_the_cache_pretrains_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPTIONER_CACHE", str(tmp_path / "cache"))
    first = run_cli("extract", *TINY, "--split", "val", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "pretraining vgg11_bn" in first.stderr
    again = run_cli("extract", *TINY, "--split", "val", cwd=tmp_path)
    assert "pretraining" not in again.stderr and "using the pretrained encoder" in again.stderr


def test_pretraining_without_object_labels_is_one_line(tmp_path: Path) -> None:
    root = generate_shapes(tmp_path / "mine", ShapesSpec(num_train=4, num_val=2, num_test=2, size=32))
    # Another dataset name: the shapes set's annotation files are not assumed, so no labels.
    result = run_cli("pretrain", *PRETRAIN, "data.dataset=mine", f"data.root={root}", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: pretraining needs object labels: set data.instances_json (COCO instances files), or "
        "use encoder.weights=imagenet or a .pth file"]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
