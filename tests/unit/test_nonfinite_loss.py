"""A loss that turns NaN or infinite stops training at once with one line naming the step; the
checkpoints keep the last good epoch (issue 22 item 13)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from helpers.cli import TINY

from captioner.config import load_config
from captioner.errors import CaptionerError
from captioner.training import module
from captioner.training.train import train


@pytest.mark.slow
def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    real, calls = module.caption_loss, []

    def poisoned(model: torch.nn.Module, *args: object) -> torch.Tensor:
        loss = real(model, *args)
        if model.training:
            calls.append(1)
            if len(calls) == 4:  # the second step of the second epoch (two steps an epoch)
                return loss * math.nan
        return loss

    monkeypatch.setattr(module, "caption_loss", poisoned)
    config = load_config(None, [*TINY, "trainer.max_epochs=3"])
    with pytest.raises(CaptionerError, match=r"the training loss is nan at step 4 \(epoch 2\)") as err:
        train(config, evaluate_after=False)
    assert "\n" not in str(err.value)
    last = tmp_path / "runs" / "shapes" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=True)
    assert saved["epoch"] == 0 and len(calls) == 4  # stopped at once, not after the epoch
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())


@pytest.mark.slow
def test_a_nan_loss_stops_the_pretraining_and_keeps_the_last_good_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same stop for the classifier pretraining (issue 22 item 13): it trained on, NaN."""
    from captioner.training import pretrain

    monkeypatch.chdir(tmp_path)
    real, calls = pretrain.ClassifierModule.forward, []

    def poisoned(self: pretrain.ClassifierModule, images: torch.Tensor) -> torch.Tensor:
        logits = real(self, images)
        if self.training:
            calls.append(1)
            if len(calls) == 4:  # the second step of the second epoch (two steps an epoch)
                return logits * math.inf
        return logits

    monkeypatch.setattr(pretrain.ClassifierModule, "forward", poisoned)
    with pytest.raises(CaptionerError, match=r"^pretraining: the training loss is (nan|inf) at step 4 "
                                             r"\(epoch 2\); stopped, the checkpoints keep the last good "
                                             r"epoch; lower pretrain.lr$") as err:
        pretrain.pretrain(None, [*TINY, "pretrain.epochs=3", "pretrain.batch_size=8"])
    assert "\n" not in str(err.value)
    run = tmp_path / "runs" / "shapes-pretrain"
    saved = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["epoch"] == 0 and len(calls) == 4  # stopped at once, not after the epoch
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())
    assert not (run / "encoder.pth").exists()
