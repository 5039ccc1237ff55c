"""compare.json as typed records: each cell's figures (mean over seeds, spread, every seed's run)
and the comparison around them.

training.py builds a CellSummary per run, cells.py the CompareResult, page.py, plots.py and the
command line read them by attribute. `from_json` checks `schema_version`: a compare.json of
another version is a one-line CaptionerError naming the file; one without a version (written
before versions existed) is read as version 1, whose fields it has.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from captioner.compare.seeds import Difference
from captioner.util.schema import check_record, fields_of, read_json

SCHEMA_VERSION = 1
# A figure of one run, or its mean or standard deviation over seeds (an int count stays an int
# when every seed agrees); None where undefined or, for a spread, fewer than two seeds gave one.
Number = float | None


@dataclass(frozen=True)
class CellSummary:
    """What one cell's training run gives (a spread over seeds has the same shape, its numbers
    standard deviations, None where fewer than two seeds gave one)."""

    params: Number  # decoder parameters
    recurrent_params: Number  # of the recurrent layer alone
    weight_sets: Number  # (W_ih, W_hh, biases) sets: the gates plus the candidate state
    epoch_seconds: Number  # training only, validation apart
    validation_seconds: Number
    epochs: Number
    val: list[dict[str, Any]]  # per epoch: "epoch" and every val/ metric
    best_epoch: Number  # by trainer.monitor, counted from 1; 0 without a validation
    test: dict[str, Number]  # BLEU-1..4 and CIDEr-D of the test captions, best epoch's weights
    mention_precision_by_position: list[Number] | None  # None without instances files
    mention_coverage_by_position: list[Number] | None
    mentions_by_position: list[Number] | None
    grad_norm_per_step: dict[str, list[Number]]  # "start", "end": |d loss / d h_t| per step
    grad_first_over_last: dict[str, Number]  # "start", "end": step 1's norm over the last's
    grad_to_initial_state: list[Number]  # per word: the norm of its error at the initial state
    clip_fraction: Number  # share of steps whose norm exceeded optim.grad_clip; None: off
    train_grad_norm: list[Number]  # every optimiser step's norm, before clipping
    gates: dict[str, Any] | None = None  # first seed only: image_id, words, mean per gate

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CellSummary:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


@dataclass(frozen=True)
class SeedRun:
    seed: int
    summary: CellSummary


@dataclass(frozen=True)
class CellFigures:
    """One cell in compare.json: its figures' means over seeds (the gates: the first seed's),
    their spreads, the seeds, and every seed's run."""

    mean: CellSummary
    spread: CellSummary
    seeds: list[int]
    runs: list[SeedRun]

    def to_json(self) -> dict[str, Any]:
        spread = self.spread.to_json()
        del spread["gates"]  # one caption's gates are not averaged
        return {**self.mean.to_json(), "seeds": self.seeds, "spread": spread,
                "runs": [{"seed": r.seed, **r.summary.to_json()} for r in self.runs]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CellFigures:
        return cls(CellSummary.from_json(data), CellSummary.from_json(data["spread"]),
                   list(data["seeds"]),
                   [SeedRun(r["seed"], CellSummary.from_json(r)) for r in data["runs"]])


@dataclass(frozen=True)
class CompareSettings:
    """What every cell shares: data, seeds, the decoder's size and the optimisation."""

    cells: list[str]
    dataset: str
    max_epochs: int
    seed: int
    seeds: list[int]
    max_objects: int | None  # the shapes generator's, None for other data
    train_images: int
    train_captions: int
    val_images: int
    test_images: int
    batch_size: int
    embed_dim: int
    hidden_dim: int
    num_layers: int
    dropout: float
    lr: float
    grad_clip: float
    monitor: str
    beam_size: int
    precision: str
    limit_train_batches: float


@dataclass(frozen=True)
class EncoderUsed:
    """The frozen encoder whose fc7 features every cell reads."""

    origin: str  # in words: a checkpoint, a pretrained file, the config's weights
    checkpoint: str | None
    arch: str
    image_size: int
    frozen: bool
    params: int


@dataclass(frozen=True)
class GradFlow:
    """How the gradient flow figures were measured: which loss, on how many captions."""

    loss: str
    initial_state_loss: str
    split: str
    captions: int
    steps: int


@dataclass(frozen=True)
class PositionsScored:
    """What the objects-by-position figures were scored on."""

    split: str
    objects: str  # the object vocabulary: "shapes" or "coco"
    images_by_position: list[int]  # images holding at least k objects, k = 1, 2, ...


@dataclass(frozen=True)
class Timing:
    features: float  # seconds extracting the features, or reading the cache
    total: float


@dataclass(frozen=True)
class CompareResult:
    """compare.json: every cell's figures, the settings they share, the encoder, how gradient
    flow and objects by position were measured, the judged differences and the time taken."""

    cells: dict[str, CellFigures]
    settings: CompareSettings
    encoder: EncoderUsed
    grad_flow: GradFlow
    positions: PositionsScored | None
    differences: list[Difference]
    seconds: Timing

    def to_json(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION,
                "cells": {cell: f.to_json() for cell, f in self.cells.items()},
                "settings": asdict(self.settings), "encoder": asdict(self.encoder),
                "grad_flow": asdict(self.grad_flow),
                "positions": None if self.positions is None else asdict(self.positions),
                "differences": [asdict(d) | {"real": d.real} for d in self.differences],
                "seconds": asdict(self.seconds)}

    @classmethod
    def from_json(cls, data: Any, where: str | Path) -> CompareResult:
        """The comparison in `data` (a parsed compare.json); `where` names the file in errors."""
        check_record(data, where, "compare.json", SCHEMA_VERSION, again="run `captioner compare` again")
        names = [f.name for f in fields(Difference)]
        with fields_of(where, "compare.json"):
            positions = data["positions"]
            return cls({cell: CellFigures.from_json(f) for cell, f in data["cells"].items()},
                       CompareSettings(**data["settings"]), EncoderUsed(**data["encoder"]),
                       GradFlow(**data["grad_flow"]),
                       None if positions is None else PositionsScored(**positions),
                       [Difference(*(d[n] for n in names)) for d in data["differences"]],
                       Timing(**data["seconds"]))

    @classmethod
    def read(cls, path: Path) -> CompareResult:
        return cls.from_json(read_json(path, path.read_text()), path)
