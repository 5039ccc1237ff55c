"""Where training departs from stock Lightning, and why: every adapter in one module.

Each piece replaces (or adds to) a stock one that does not serve:

- `AtomicCheckpointIO` for TorchCheckpointIO: the stock one writes the checkpoint in place, so a
  crash, a full disk or a symbolic link leaves half a file or writes into another; this one saves
  into a synced temporary file beside the target and renames it over.
- `RunCheckpoints` for ModelCheckpoint: ModelCheckpoint keeps two full copies (best and last),
  forgets its best score when a folder is moved, saves no RNG state and cannot repair a folder a
  kill left between writing last.ckpt and best.ckpt. See "Checkpoints" below.
- `RunLog` for CSVLogger: CSVLogger deletes an existing metrics.csv when its folder is reused, so
  a resumed run would lose its learning curves. See "The metrics log" below.
- `RunFolder`, no stock piece: only rank 0 claims the run folder, before any process group
  exists; once the ranks can talk it tells them the folder's name.
- `StderrProgressBar` for TQDMProgressBar, which draws on stdout: stdout carries only results.
- `EpochLines`, no stock piece: one line per epoch for logs and pipes, where a bar is noise.
- `fit` around Trainer.fit: Lightning turns Ctrl-C into exit(1) (SystemExit); this turns it back
  into KeyboardInterrupt, which each stage turns into a line saying what it kept.
- `clip_gradients` for Trainer(gradient_clip_val=...): Lightning refuses its own clipping with
  fused optimisers (the Adam this project uses), and would not log the norm or whether clipping
  engaged.
- `gathered` for LightningModule.all_gather, which gathers tensors only: validation's captions
  are Python objects, so torch.distributed.all_gather_object collects them.

Only public API of every allowed release is used (pyproject: torch>=2.6, lightning>=2.4):
the CheckpointIO plugin, Callback and Logger hooks with state_dict, Trainer.save_checkpoint,
Strategy.broadcast, TQDMProgressBar's init_*_tqdm, torch.distributed.all_gather_object.

Checkpoints
-----------
Checkpoints never lose work: last.ckpt after every epoch, best.ckpt for the best one.

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

The metrics log
---------------
logs/metrics.csv holds one row per logging call, the whole history kept. RunLog reads the old
file first, keeps every row up to the step the run resumes from (rows after it belong to the
interrupted attempt, which training repeats: everything logged at or after the checkpoint's
step), and appends. The file is rewritten atomically whenever a new column appears.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Checkpoint, TQDMProgressBar
from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.profilers import SimpleProfiler
from lightning.pytorch.utilities import rank_zero_only

from captioner.config import monitor_mode
from captioner.util.atomic import atomic_path, is_temp_file, same_file, write_text
from captioner.util.console import say
from captioner.util.interrupts import held_interrupt
from captioner.util.launch import launch

# -- checkpoints -----------------------------------------------------------------------------------
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


# -- the metrics log -------------------------------------------------------------------------------
FILE = "metrics.csv"
_FIRST = ("epoch", "step")


class RunLog(Logger):
    def __init__(self, run_dir: Path, resume_step: int | None = None) -> None:
        super().__init__()
        self.folder = Path(run_dir) / "logs"
        self.path = self.folder / FILE
        self._columns: list[str] = []
        self._rows: list[dict[str, Any]] = []
        if resume_step is not None and self.path.is_file():
            self._rows = [row for row in read_rows(self.path) if _step(row) < resume_step]
            self._columns = sorted({k for row in self._rows for k in row if row[k] != ""})
            if launch().rank == 0:  # the run folder is rank 0's (util.runs)
                self._rewrite()
        self._written = len(self._rows)

    @property
    def name(self) -> str:
        return "logs"

    @property
    def version(self) -> str:
        return ""

    @property
    def log_dir(self) -> str:
        return str(self.folder)

    @property
    def save_dir(self) -> str:
        return str(self.folder.parent)

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """The config lives in config.yaml and in every checkpoint; nothing to repeat here."""

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._rows.append({"step": step if step is not None else len(self._rows),
                           **{k: _plain(v) for k, v in metrics.items()}})

    @rank_zero_only
    def save(self) -> None:
        new = self._rows[self._written:]
        if not new:
            return
        keys = {k for row in new for k in row}
        if not keys <= set(self._columns) or not self.path.is_file():
            self._columns = sorted(set(self._columns) | keys)
            self._rewrite()
        else:
            with open(self.path, "a", newline="", encoding="utf-8") as f:
                csv.DictWriter(f, fieldnames=self._header()).writerows(new)
        self._written = len(self._rows)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.save()

    def _header(self) -> list[str]:
        return [*_FIRST, *(c for c in self._columns if c not in _FIRST)]

    def _rewrite(self) -> None:
        buffer = io.StringIO()
        # A column empty in every kept row is dropped, though the rows read back still name it.
        writer = csv.DictWriter(buffer, fieldnames=self._header(), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self._rows)
        write_text(self.path, buffer.getvalue())


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _step(row: dict[str, Any]) -> float:
    try:
        return float(row.get("step") or 0)
    except ValueError:
        return math.inf  # a torn last line from a crash: not part of the kept history


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


# -- the run folder, progress and interrupts -------------------------------------------------------
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


# -- optimisation and validation -------------------------------------------------------------------
def clip_gradients(module: L.LightningModule, optimizer: torch.optim.Optimizer, limit: float) -> None:
    """Clip by global norm (Lightning has unscaled AMP gradients by now) and log the norm and
    whether clipping engaged: the exploding-gradient half of the story. 0: no clipping."""
    if limit <= 0:
        return
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm=limit)
    # Logged by step, like everything else: a value logged after the epoch's checkpoint would be
    # missing from the log of a run killed in between and resumed.
    module.log("train/grad_norm", norm, on_step=True, on_epoch=False, batch_size=1)
    module.log("train/clipped", (norm > limit).float(), on_step=True, on_epoch=False, batch_size=1)


def gathered(items: list) -> list:
    """Every rank's `items` (any picklable objects), in rank order; `items` alone outside DDP."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts: list[list] = [[] for _ in range(dist.get_world_size())]
        dist.all_gather_object(parts, items)
        return [item for part in parts for item in part]
    return items
