"""Training one cell on the shared features and measuring it: speed, validation curves, test
scores, gradient flow before and after, the objects its test captions name by position, how much
of each word's error reaches the initial state, and its gates along one caption.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from captioner.compare.page import GateTrace
from captioner.compare.positions import score_positions
from captioner.compare.records import CellSummary
from captioner.compare.shared import Shared
from captioner.config import Config, monitor_mode, to_dict
from captioner.data.coco import ImageRecord
from captioner.data.datamodule import CaptionDataModule
from captioner.data.tokenize import tokenize
from captioner.data.vocab import Vocabulary
from captioner.evaluation.evaluate import caption_split
from captioner.evaluation.mentions import ObjectIndex
from captioner.evaluation.metrics import score_captions
from captioner.features.cache import FeatureStore
from captioner.model.decoder import Decoder
from captioner.model.encoder import VGGEncoder
from captioner.model.inference import Captioner
from captioner.model.network import CaptionModel
from captioner.model.search import greedy
from captioner.model.unroll import (
    GATES,
    gate_trace,
    hidden_gradient_norms,
    initial_state_gradient_norms,
    parameter_counts,
)
from captioner.training.module import CaptionModule
from captioner.training.trainer import build_trainer
from captioner.util.console import say

TEST_METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "cider")


class Recorder(L.Callback):
    """Training seconds and validation metrics per epoch, the gradient norm of every step (as
    CaptionModule logs it, before clipping), and the decoder weights of the best epoch."""

    def __init__(self, monitor: str) -> None:
        self.monitor = monitor
        self.train_seconds: list[float] = []
        self.val_seconds: list[float] = []
        self.val: list[dict[str, float]] = []
        self.grad_norms: list[float] = []
        self.best_epoch = 0  # counted from 1; 0 until a validation ran
        self.best_state: dict[str, Tensor] | None = None
        self._best = float("-inf")
        self._clock = self._val_clock = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._clock = time.perf_counter()
        self.val_seconds.append(0.0)

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        norm = trainer.callback_metrics.get("train/grad_norm")
        if outputs is not None and norm is not None:  # None: an all-unreadable batch, no step
            self.grad_norms.append(float(norm))

    def on_validation_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._val_clock = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.val_seconds[-1] += time.perf_counter() - self._val_clock
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        epoch = trainer.current_epoch + 1
        self.val.append({"epoch": epoch, **metrics})
        score = metrics.get(self.monitor, float("-inf"))
        score = -score if monitor_mode(self.monitor) == "min" else score
        if self.best_state is None or score > self._best:
            self._best, self.best_epoch = score, epoch
            # The decoder is a few MB: kept in memory instead of a 500 MB checkpoint with the VGG.
            decoder = module.model.decoder  # type: ignore[attr-defined]
            self.best_state = {k: v.detach().clone() for k, v in decoder.state_dict().items()}

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # Validation runs inside the training epoch; its time is reported apart.
        self.train_seconds.append(time.perf_counter() - self._clock - self.val_seconds[-1])


def caption_test_split(model: CaptionModel, config: Config, vocab: Vocabulary,
                       records: Sequence[ImageRecord], store: FeatureStore) -> dict[int, str]:
    """image id -> beam-search caption, as `captioner evaluate` decodes them."""
    captioner = Captioner(model, vocab, config, next(model.decoder.parameters()).device)
    return caption_split(captioner, records, store, config.eval.beam_size)


def score_test_split(records: Sequence[ImageRecord], predictions: dict[int, str]) -> dict[str, float]:
    """BLEU-1..4 and CIDEr-D of the test captions."""
    scores = score_captions({r.image_id: r.captions for r in records}, predictions, meteor=False)
    return {k: scores.corpus[k] for k in TEST_METRICS}


def position_figures(objects: ObjectIndex | None, predictions: dict[int, str]
                     ) -> tuple[list[float | None] | None, list[float] | None, list[int] | None]:
    """The per-position mention precision, coverage and counts of the test captions (None
    without instances files)."""
    if objects is None:
        return None, None, None
    scores = score_positions({i: tokenize(c) for i, c in predictions.items()}, objects)
    return scores.precision, scores.coverage, scores.mentions


def trace_gates(decoder: Decoder, config: Config, vocab: Vocabulary, record: ImageRecord,
                feature: Tensor) -> GateTrace | None:
    """The gates along the greedy caption of one image (None for the gate-less RNN)."""
    if not GATES[decoder.cell]:
        return None
    decoder.eval()
    device = next(decoder.parameters()).device
    feature = feature.to(device)
    (hyp,) = greedy(decoder.step, decoder.initial_state(feature.unsqueeze(0)), bos=vocab.start,
                    eos=vocab.end, max_length=config.eval.max_length, banned=(vocab.pad, vocab.start))
    tokens = list(hyp.tokens)
    # Step t reads the previous word and emits word t; an unfinished caption emits no <end>.
    inputs = [vocab.start, *tokens] if hyp.finished else [vocab.start, *tokens[:-1]]
    words = [vocab.words[i] for i in tokens] + (["<end>"] if hyp.finished else [])
    gates = gate_trace(decoder, feature, torch.tensor(inputs, device=device))
    return GateTrace(decoder.cell, record.image_id, record.path, words,
                     {name: values.T.cpu().numpy() for name, values in gates.items()})


@dataclass
class CellRun:
    summary: CellSummary  # what compare.json holds for the cell (for one seed)
    gates: GateTrace | None


@dataclass
class Trained:
    module: CaptionModule
    recorder: Recorder
    grad_start: list[float]  # ‖d loss / d h_t‖ before training
    grad_end: list[float]  # and after the last epoch


def train_cell(config: Config, shared: Shared, encoder: VGGEncoder, folder: Path) -> Trained:
    """Train one cell on the shared features, measuring its gradient flow before and after."""
    seed, cell = config.trainer.seed, config.decoder.cell
    L.seed_everything(seed, workers=True, verbose=False)
    module = CaptionModule(to_dict(config), shared.vocab.to_list())
    module.model.encoder = encoder  # the one the features came from; frozen, never trained here
    decoder = module.model.decoder
    grad_batch = (shared.grad_features, shared.grad_ids[:, :-1], shared.grad_ids[:, 1:])
    start = hidden_gradient_norms(decoder, *grad_batch)

    # Reseeded: the cells' initialisations drew different amounts of randomness, and every cell
    # must see the same batches and the same captions of each image.
    L.seed_everything(seed, workers=True, verbose=False)
    recorder = Recorder(config.trainer.monitor)
    # One device, no checkpoints or early stopping: every cell gets the same epochs, in-process.
    trainer = build_trainer(config, folder, [recorder], monitor=config.trainer.monitor, what=cell,
                            checkpoints=False, devices=1, num_nodes=1, strategy="auto",
                            num_sanity_val_steps=0)
    trainer.fit(module, CaptionDataModule(shared.train_set, shared.val_set,
                                          batch_size=config.data.batch_size,
                                          num_workers=config.data.num_workers, seed=seed))
    device = next(decoder.parameters()).device
    end = hidden_gradient_norms(decoder, *(x.to(device) for x in grad_batch))
    return Trained(module, recorder, start, end)


def run_cell(config: Config, shared: Shared, encoder: VGGEncoder, folder: Path) -> CellRun:
    """Train one cell on the shared features; measure it before and after, and with the best
    epoch's weights: test scores, objects by position, the gradient that reaches the image."""
    trained = train_cell(config, shared, encoder, folder)
    recorder, decoder = trained.recorder, trained.module.model.decoder
    counts = parameter_counts(decoder)
    if recorder.best_state is not None:
        decoder.load_state_dict(recorder.best_state)
    device = next(decoder.parameters()).device
    ids = shared.grad_ids.to(device)
    to_image = initial_state_gradient_norms(decoder, shared.grad_features.to(device), ids[:, :-1],
                                            ids[:, 1:])
    predictions = caption_test_split(trained.module.model, config, shared.vocab,
                                     shared.test_records, shared.test_store)
    test = score_test_split(shared.test_records, predictions)
    first = shared.test_records[0]
    gates = trace_gates(decoder, config, shared.vocab, first, shared.test_store[first.image_id])
    limit, norms = config.optim.grad_clip, recorder.grad_norms
    precision, coverage, mentions = position_figures(shared.objects, predictions)
    summary = CellSummary(
        **counts,  # params, recurrent_params, weight_sets
        epoch_seconds=_mean(recorder.train_seconds),
        validation_seconds=_mean(recorder.val_seconds),
        epochs=len(recorder.train_seconds),
        val=recorder.val,
        best_epoch=recorder.best_epoch,
        test=test,
        mention_precision_by_position=precision, mention_coverage_by_position=coverage,
        mentions_by_position=mentions,
        grad_norm_per_step={"start": trained.grad_start, "end": trained.grad_end},
        # The first step's gradient over the last's: how much of it survives back through time.
        grad_first_over_last={when: _ratio(norms_t) for when, norms_t in
                              (("start", trained.grad_start), ("end", trained.grad_end))},
        grad_to_initial_state=to_image,
        # Share of optimiser steps whose gradient norm exceeded optim.grad_clip (None: clipping off).
        clip_fraction=sum(n > limit for n in norms) / len(norms) if limit > 0 and norms else None,
        train_grad_norm=norms,
        gates=None if gates is None else {
            "image_id": gates.image_id, "words": gates.words,
            "mean": {name: values.mean(axis=0).tolist() for name, values in gates.values.items()},
        },
    )
    say(f"{config.decoder.cell} (seed {config.trainer.seed}): {summary.epoch_seconds:.1f} s/epoch, "
        f"test BLEU-4 {test['bleu4']:.3f}, CIDEr-D {test['cider']:.3f}")
    return CellRun(summary, gates)


def _ratio(norms: Sequence[float]) -> float | None:
    return norms[0] / norms[-1] if norms and norms[-1] > 0 else None


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0
