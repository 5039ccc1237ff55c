"""The Lightning Trainer every training run uses (caption model, encoder pretraining, compare).

What it adds to Lightning's defaults: atomic checkpoints and their RNG states (checkpoints.py),
a metrics log that survives resuming (runlog.py), bf16 autocast where the hardware does it fast,
progress on stderr (a bar on a terminal, one line per epoch otherwise), so that stdout
carries only results, and the stop every training step makes when its loss is not finite.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, TQDMProgressBar
from lightning.pytorch.profilers import SimpleProfiler
from torch import Tensor

from captioner.config import Config
from captioner.errors import CaptionerError
from captioner.training.checkpoints import AtomicCheckpointIO, RunCheckpoints
from captioner.training.runlog import RunLog
from captioner.util.console import bars, quieten_lightning, say
from captioner.util.hardware import resolve_precision


class StderrProgressBar(TQDMProgressBar):
    """Lightning's progress bars, drawn on stderr (Lightning draws them on stdout)."""

    def init_sanity_tqdm(self) -> Any:
        with contextlib.redirect_stdout(sys.stderr):
            return super().init_sanity_tqdm()

    def init_train_tqdm(self) -> Any:
        with contextlib.redirect_stdout(sys.stderr):
            return super().init_train_tqdm()

    def init_validation_tqdm(self) -> Any:
        with contextlib.redirect_stdout(sys.stderr):
            return super().init_validation_tqdm()


class RunFolder(L.Callback):
    """Rank 0's run folder on every rank, agreed as soon as the process group exists.

    Only rank 0 claims a run folder (util.runs), before any process group exists, so the other
    ranks cannot know its name (it may be runs/shapes-2) when their Trainer is built. Lightning
    has no stock piece for this; once the ranks can talk, rank 0 names the folder and the
    checkpoints (which sharded strategies save from every rank) and the profiles go there."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def setup(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        self.run_dir = Path(trainer.strategy.broadcast(str(self.run_dir), src=0))
        for callback in trainer.callbacks:
            if isinstance(callback, RunCheckpoints):
                callback.folder = self.run_dir / "checkpoints"
        if isinstance(trainer.profiler, SimpleProfiler) and trainer.profiler.dirpath is not None:
            trainer.profiler.dirpath = self.run_dir / "logs"


class EpochLines(L.Callback):
    """One line per epoch on stderr, for logs and pipes where a progress bar would be noise."""

    def __init__(self, what: str) -> None:
        self.what, self._start = what, 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        shown = {k: float(v) for k, v in trainer.callback_metrics.items()
                 if k.startswith(("train/loss", "val/")) and v.numel() == 1}
        values = "  ".join(f"{k} {v:.4g}" for k, v in sorted(shown.items()))
        say(f"{self.what}: epoch {trainer.current_epoch + 1}/{trainer.max_epochs}  {values}  "
            f"({time.perf_counter() - self._start:.0f} s)")


def build_trainer(config: Config, run_dir: Path, callbacks: list[L.Callback], *, monitor: str,
                  what: str, resume_step: int | None = None, checkpoints: bool = True,
                  **overrides: Any) -> L.Trainer:
    """A Trainer writing run_dir/checkpoints (best by `monitor`, and last) and run_dir/logs.

    `what` names the run in progress lines; `resume_step` keeps the log's rows up to that step;
    `overrides` adjust any Trainer argument (compare trains on one device, without checkpoints).
    """
    quieten_lightning()
    t = config.trainer
    progress: L.Callback = StderrProgressBar(refresh_rate=10) if bars() else EpochLines(what)
    own = [RunFolder(run_dir), *([RunCheckpoints(run_dir / "checkpoints", monitor)] if checkpoints else [])]
    settings = {
        "default_root_dir": run_dir, "max_epochs": t.max_epochs, "accelerator": t.accelerator,
        "devices": int(t.devices) if t.devices.isdigit() else t.devices, "num_nodes": t.num_nodes,
        "strategy": t.strategy, "precision": resolve_precision(config),
        "callbacks": [*own, *callbacks, progress, LearningRateMonitor(logging_interval="step")],
        "logger": RunLog(run_dir, resume_step), "plugins": [AtomicCheckpointIO()],
        "enable_checkpointing": checkpoints,  # with RunCheckpoints, Lightning adds no ModelCheckpoint
        "enable_progress_bar": bars(),
        "limit_train_batches": t.limit_train_batches, "limit_val_batches": t.limit_val_batches,
        "log_every_n_steps": t.log_every_n_steps, "enable_model_summary": False,
        # Lightning's own timer of every hook: where a step's time goes (logs/fit-profile.txt).
        "profiler": SimpleProfiler(dirpath=run_dir / "logs", filename="profile") if t.profile else None,
    }
    return L.Trainer(**(settings | overrides))


def fit(trainer: L.Trainer, module: L.LightningModule, *data: Any, resume: Path | None = None) -> None:
    """trainer.fit, with Ctrl-C raised as KeyboardInterrupt (Lightning turns it into exit(1))."""
    try:
        trainer.fit(module, *data, ckpt_path=resume)
    except SystemExit:
        if trainer.interrupted:
            raise KeyboardInterrupt from None
        raise
    if trainer.interrupted:
        raise KeyboardInterrupt


def stop_unless_finite(module: L.LightningModule, loss: Tensor, what: str, advice: str) -> None:
    """Stop before a NaN or infinite loss reaches the weights: every later step would be NaN too,
    and the checkpoints still hold the last good epoch. `what` names the run ("training"),
    `advice` the settings to change."""
    finite = bool(torch.isfinite(loss))
    if module.trainer.world_size > 1:  # every rank stops together, or the others would hang
        finite = module.trainer.strategy.reduce_boolean_decision(finite, all=True)
    if not finite:
        raise CaptionerError(
            f"{what}: the training loss is {loss.item() if loss.numel() == 1 else 'not finite'} "
            f"at step {module.global_step + 1} (epoch {module.current_epoch + 1}); stopped, the "
            f"checkpoints keep the last good epoch; {advice}")
