"""Checkpoints that never lose work: last.ckpt after every epoch, best.ckpt for the best one.

- Every checkpoint is written through AtomicCheckpointIO: a temporary file beside the target,
  synced to the disk, then renamed over it. A rename never follows a symbolic link and never
  crosses a file system, so no save can write into another checkpoint or leave half a file.
- best.ckpt is a hard link to (or, without hard links, a copy of) the last.ckpt that scored best;
  writing the next last.ckpt replaces that name only, so best.ckpt keeps its state. Once a later
  epoch is last, best.ckpt drops the optimiser's state, which only resuming needs (resume from
  last.ckpt): a run folder then holds one full checkpoint, not two.
- last.ckpt is written first and records which epoch is the best (its own, when it improved), so
  a process killed before best.ckpt followed it leaves a folder that resuming repairs: best.ckpt
  is linked to last.ckpt again, or stripped of the optimiser's state it still held.
- The best score travels inside every checkpoint, so a run folder that was moved or copied resumes
  comparing with it rather than taking whatever its first validation gives.
- Ctrl-C while a checkpoint is written takes effect once it (and best.ckpt) are complete.
- The random number generators travel too, and are restored when training resumes: with the
  DataModule's own generator (data order) an interrupted and resumed run ends with exactly the
  weights of a run that never stopped.

Only public Lightning API is used: the CheckpointIO plugin, Callback hooks and state_dict.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from captioner.config import monitor_mode
from captioner.util.atomic import atomic_path, is_temp_file, same_file
from captioner.util.interrupts import held_interrupt

BEST, LAST = "best.ckpt", "last.ckpt"
RESUME_ONLY = ("optimizer_states", "lr_schedulers")  # what a checkpoint holds for resuming alone


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into a synced temporary file beside the target, then an atomic rename."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


class RunCheckpoints(Checkpoint):
    """last.ckpt at the end of every training epoch; best.ckpt when `monitor` improved.

    A Checkpoint, so Lightning runs it after the other callbacks at each epoch's end: the state
    early stopping saves is then that of the epoch the checkpoint is of."""

    def __init__(self, folder: Path, monitor: str) -> None:
        self.folder, self.monitor, self.mode = Path(folder), monitor, monitor_mode(monitor)
        self.best: float | None = None
        self.best_epoch: int | None = None  # the epoch best.ckpt holds
        self._epoch: int | None = None  # the epoch of the checkpoint being saved or loaded
        self._rng: dict[str, Any] | None = None  # loaded states, applied when training starts

    @property
    def state_key(self) -> str:
        return "RunCheckpoints"

    def setup(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        if trainer.is_global_zero and self.folder.is_dir():  # left by a process killed mid-save
            for leftover in self.folder.iterdir():
                if is_temp_file(leftover, LAST) or is_temp_file(leftover, BEST):
                    leftover.unlink(missing_ok=True)

    def on_fit_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.is_global_zero and self._epoch is not None and trainer.ckpt_path is not None \
                and _same_inode(Path(trainer.ckpt_path), self.folder / LAST):
            self._repair_best(self._epoch)
        trainer.strategy.barrier("RunCheckpoints.repair")

    def _repair_best(self, last_epoch: int) -> None:
        """Finish what a process killed between writing last.ckpt and updating best.ckpt left."""
        last, best = self.folder / LAST, self.folder / BEST
        if self.best_epoch == last_epoch and not _same_inode(last, best):
            same_file(last, best)  # last.ckpt was the new best; best.ckpt still held an older one
        elif self.best_epoch is not None and self.best_epoch < last_epoch and best.is_file() \
                and not _same_inode(last, best) and _holds_resume_state(best):
            keep_weights_only(best)

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self._rng is not None:
            set_rng_states(self._rng)
            self._rng = None

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        score = trainer.callback_metrics.get(self.monitor)
        improved = score is not None and self._better(float(score))
        if improved:
            self.best, self.best_epoch = float(score), trainer.current_epoch
        self._epoch = trainer.current_epoch  # recorded in last.ckpt with best_epoch
        last, best = self.folder / LAST, self.folder / BEST
        shared = trainer.is_global_zero and _same_inode(last, best)
        with held_interrupt():  # Ctrl-C now would lose the epoch: it comes once both are written
            trainer.save_checkpoint(last, weights_only=False)  # every rank takes part; rank 0 writes
            if improved and trainer.is_global_zero:
                same_file(last, best)
            elif shared:  # best.ckpt is no longer last.ckpt: it keeps what captioning needs
                keep_weights_only(best)
        trainer.strategy.barrier("RunCheckpoints")

    def _better(self, score: float) -> bool:
        if math.isnan(score):
            return False
        if self.best is None:
            return True
        return score < self.best if self.mode == "min" else score > self.best

    def state_dict(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "best": self.best, "best_epoch": self.best_epoch,
                "epoch": self._epoch, "rng": rng_states()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("monitor") == self.monitor:  # a changed trainer.monitor starts a new contest
            self.best, self.best_epoch = state.get("best"), state.get("best_epoch")
        self._epoch = state.get("epoch")
        self._rng = state.get("rng")


def _same_inode(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


def _holds_resume_state(path: Path) -> bool:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # an unreadable best.ckpt is left for the user to see, not rewritten
        return False
    return any(key in checkpoint for key in RESUME_ONLY)


def keep_weights_only(path: Path) -> None:
    """Rewrite a checkpoint without the optimiser's and schedulers' state (atomically)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    for key in RESUME_ONLY:
        checkpoint.pop(key, None)
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


def rng_states() -> dict[str, Any]:
    """Every generator training draws from, as tensors and plain values (weights-only loadable)."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss],
        "python": random.getstate(),
    }


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    kind, keys, position, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
