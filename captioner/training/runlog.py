"""The run's metrics log, logs/metrics.csv: one row per logging call, the whole history kept.

Lightning's CSVLogger deletes an existing metrics.csv when its folder is reused, so a resumed run
would lose its learning curves. This logger reads the old file first, keeps every row up to the
step the run resumes from (rows after it belong to the interrupted attempt, which training
repeats: everything logged at or after the checkpoint's step), and appends. The file is rewritten
atomically whenever a new column appears.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.utilities import rank_zero_only

from captioner.util.atomic import write_text
from captioner.util.launch import launch

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
