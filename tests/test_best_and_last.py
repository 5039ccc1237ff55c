"""best.ckpt keeps the best epoch; last.ckpt always holds the latest state, whatever the metric did."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from captioner.training import BestAndLast

SCORES = [0.3, 0.5, 0.4, 0.45, 0.6, 0.2]  # a validation metric by epoch: best at 1, then at 4


class Scripted(BoringModel):
    def on_validation_epoch_end(self) -> None:
        self.log("val/bleu4", SCORES[self.current_epoch])


def _epoch(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=False)["epoch"]


def _fit(folder: Path, epochs: int) -> tuple[Path, Path]:
    trainer = L.Trainer(max_epochs=epochs, callbacks=[BestAndLast(folder, "val/bleu4")], logger=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_train_batches=2,
                        limit_val_batches=1, num_sanity_val_steps=0)
    trainer.fit(Scripted())
    return folder / "best.ckpt", folder / "last.ckpt"


def test_last_is_the_latest_epoch_even_when_it_is_not_the_best(tmp_path: Path) -> None:
    best, last = _fit(tmp_path, epochs=3)
    assert _epoch(best) == 1 and _epoch(last) == 2
    assert not last.is_symlink()


def test_last_links_to_best_when_the_latest_epoch_is_the_best(tmp_path: Path) -> None:
    best, last = _fit(tmp_path, epochs=5)  # epoch 4 is a new best, after two that were not
    assert _epoch(best) == 4 and last.is_symlink() and last.resolve() == best.resolve()


def test_a_later_worse_epoch_leaves_the_best_file_alone(tmp_path: Path) -> None:
    best, last = _fit(tmp_path, epochs=6)
    assert _epoch(best) == 4 and _epoch(last) == 5 and not last.is_symlink()
