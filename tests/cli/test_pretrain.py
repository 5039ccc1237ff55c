"""captioner pretrain: a VGG trained as a classifier of the dataset's objects, saved without its
classifier for encoder.weights=PATH, cached for encoder.weights=pretrain, resumable."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import wait_until
from helpers.cli import TINY, run_cli

from captioner.config import load_config
from captioner.data.shapes import ShapesSpec, generate_shapes
from captioner.model.encoder import build_encoder
from captioner.training.pretrain import Targets

PRETRAIN = [o for o in TINY if not o.startswith("pretrain.")]


def test_targets_are_objects_and_optionally_counts() -> None:
    labels = [["red circle", "red circle", "blue square"], ["blue square"]] * 250 + [["rare one"]] * 4
    assert Targets.build(labels, counts=False).names == ["blue square", "red circle"]  # rare: < 5 images
    targets = Targets.build(labels, counts=True)
    assert targets.names == ["blue square", "red circle", "red circle x2+"]
    assert targets.encode(labels[0]).tolist() == [1.0, 1.0, 1.0]
    assert targets.encode(["red circle", "green triangle"]).tolist() == [0.0, 1.0, 0.0]  # unseen: no column


def test_a_small_set_keeps_its_rarer_labels() -> None:
    # 5 images of 14 would leave nothing to learn from a tiny set: there, 1% of the images is enough.
    labels = [["red circle"], ["blue square"]] * 5 + [["rare one"]] * 4
    assert Targets.build(labels, counts=False).names == ["blue square", "rare one", "red circle"]
    assert Targets.build([[], []], counts=False).names == []


def test_images_without_labels_are_a_one_line_error(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from captioner.data.coco import ImageRecord
    from captioner.errors import CaptionerError
    from captioner.training.pretrain import labelled

    records = [ImageRecord(i, tmp_path / f"{i}.png", "train", ("a picture",)) for i in (1, 2)]
    data = SimpleNamespace(root=tmp_path, split=lambda split: records)
    with pytest.raises(CaptionerError, match="carry no labels to classify; set encoder.weights"):
        labelled(data, "train", {1: [], 2: []}, None, counts=False)


@pytest.mark.slow
def test_the_classifier_starts_at_each_targets_frequency() -> None:
    from captioner.config import load_config, to_dict
    from captioner.training.pretrain import ClassifierModule

    module = ClassifierModule(to_dict(load_config(None, ["encoder.arch=vgg11"])), ["a", "b", "c"])
    targets = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    module.start_at_priors(targets)
    # sigmoid(bias) is each column's share of positives (a never-seen one clamped above 0).
    torch.testing.assert_close(torch.sigmoid(module.head.bias), torch.tensor([0.75, 0.25, 1e-3]))


@pytest.mark.slow
def test_pretrain_saves_an_encoder_that_train_loads_and_resumes(tmp_path: Path) -> None:
    result = run_cli("pretrain", *PRETRAIN, "pretrain.epochs=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    weights = tmp_path / "runs" / "shapes-pretrain" / "encoder.pth"
    assert f"encoder.weights={weights}" in result.stdout
    saved = torch.load(weights, weights_only=True)
    assert not any(k.startswith("classifier.6.") for k in saved["state_dict"])  # the classifier is gone
    arch = load_config(None, []).encoder.arch  # the default, a narrowed VGG11-BN
    assert saved["captioner"]["arch"] == arch and "val_f1" in saved["captioner"]
    encoder = build_encoder(arch, str(weights))
    assert torch.equal(encoder.features[0].weight, saved["state_dict"]["features.0.weight"])

    last = tmp_path / "runs" / "shapes-pretrain" / "checkpoints" / "last.ckpt"
    # The fixed fc6/fc7 are rebuilt on resume, not written each epoch: the checkpoint has the convs.
    assert not any(k.startswith("encoder.fc.") for k in torch.load(last, weights_only=True)["state_dict"])
    assert last.stat().st_size < 200e6
    resumed = run_cli("pretrain", "--resume", str(last), "pretrain.epochs=2", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert torch.load(last, weights_only=True)["epoch"] == 1

    trained = run_cli("train", *TINY, f"encoder.weights={weights}", "--no-eval", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "pretraining" not in trained.stderr  # a given file is used as it is


@pytest.mark.slow
def test_the_cache_pretrains_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPTIONER_CACHE", str(tmp_path / "cache"))
    first = run_cli("extract", *TINY, "--split", "val", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert f"pretraining {load_config(None, []).encoder.arch} " in first.stderr
    again = run_cli("extract", *TINY, "--split", "val", cwd=tmp_path)
    assert "pretraining" not in again.stderr and "using the pretrained encoder" in again.stderr


@pytest.mark.slow
def test_without_object_labels_the_captions_words_are_the_targets(tmp_path: Path) -> None:
    root = generate_shapes(tmp_path / "mine", ShapesSpec(num_train=40, num_val=4, num_test=2, size=32))
    # Another dataset name: the shapes set's annotation files are not assumed, so no object labels.
    mine = [*PRETRAIN, "data.dataset=mine", f"data.root={root}"]
    refused = run_cli("pretrain", *mine, "pretrain.targets=objects", cwd=tmp_path)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        "error: pretrain.targets=objects needs object labels: set data.instances_json (COCO instances "
        "files), or use pretrain.targets=words"]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    words = run_cli("pretrain", *mine, "pretrain.epochs=1", cwd=tmp_path)
    assert words.returncode == 0, words.stderr[-3000:]
    targets = torch.load(tmp_path / "runs" / "shapes-pretrain" / "encoder.pth", weights_only=True)
    assert {"circle", "square", "triangle"} <= set(targets["captioner"]["targets"])
    assert not {"a", "with", "of"} & set(targets["captioner"]["targets"])


@pytest.mark.slow
def test_a_killed_pretraining_resumes_to_the_uninterrupted_weights(tmp_path: Path) -> None:
    """Issue 22 item 7: killed after its first checkpoint and resumed, a pretraining ends with the
    weights, log and encoder.pth of one that never stopped (the data order is restored too)."""
    import os
    import signal
    import subprocess
    import sys

    from captioner.training.adapters import read_rows

    run = [*PRETRAIN, "pretrain.epochs=3", "pretrain.batch_size=4"]  # 2 of 4 batches an epoch
    (tmp_path / "whole").mkdir()
    whole = run_cli("pretrain", *run, cwd=tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    (tmp_path / "killed").mkdir()
    folder = tmp_path / "killed" / "runs" / "shapes-pretrain"
    last = folder / "checkpoints" / "last.ckpt"
    process = subprocess.Popen([sys.executable, "-m", "captioner", "pretrain", *run],
                               cwd=tmp_path / "killed", env=os.environ.copy(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: last.exists() or process.poll() is not None, 300, f"{last}")
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert torch.load(last, weights_only=True)["epoch"] < 2  # killed before the end
    resumed = run_cli("pretrain", "--resume", str(last), cwd=tmp_path / "killed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    reference = tmp_path / "whole" / "runs" / "shapes-pretrain"
    mine, theirs = (torch.load(f / "checkpoints" / "last.ckpt", weights_only=True)
                    for f in (folder, reference))
    assert mine["global_step"] == theirs["global_step"]
    for name, value in theirs["state_dict"].items():
        assert torch.equal(mine["state_dict"][name], value), name
    mine, theirs = (torch.load(f / "encoder.pth", weights_only=True) for f in (folder, reference))
    assert mine["captioner"] == theirs["captioner"]
    for name, value in theirs["state_dict"].items():
        assert torch.equal(mine["state_dict"][name], value), name
    assert read_rows(folder / "logs" / "metrics.csv") == read_rows(reference / "logs" / "metrics.csv")
