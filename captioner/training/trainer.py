"""The Lightning Trainer every training run uses (caption model, encoder pretraining, compare).

What it adds to Lightning's defaults: bf16 autocast where the hardware does it fast, the stop
every training step makes when its loss is not finite, and the adapters of adapters.py (atomic
checkpoints with their RNG states, a metrics log that survives resuming, rank 0's run folder on
every rank, progress on stderr so that stdout carries only results), each with why Lightning's
stock piece does not serve.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.profilers import SimpleProfiler
from torch import Tensor

from captioner.config import Config
from captioner.errors import CaptionerError
from captioner.training.adapters import (
    AtomicCheckpointIO,
    EpochLines,
    RunCheckpoints,
    RunFolder,
    RunLog,
    StderrProgressBar,
)
from captioner.util.console import bars, quieten_lightning
from captioner.util.hardware import resolve_precision


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
