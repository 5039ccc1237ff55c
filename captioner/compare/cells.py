"""`captioner compare`: the same decoder trained with each recurrent cell on the same features.

Why an LSTM or a GRU rather than a plain RNN, shown on this project's own runs: every cell gets
the same data, seed, epochs and fc7 features (extracted once, from one frozen encoder), and the
comparison records parameters, speed, validation curves and test scores, plus what the choice is
about: how much gradient reaches early time steps, how often clipping had to engage, and what
the gates do along a caption. Results go to DIR/compare.json and the page DIR/index.html.
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

from captioner.compare.page import GateTrace, render_compare_page
from captioner.config import Config, from_dict, monitor_mode, to_dict, validate
from captioner.data.coco import ImageRecord
from captioner.data.datamodule import CaptionDataModule, CaptionSet
from captioner.data.prepare import PreparedData, build_vocab, prepare
from captioner.data.tokenize import tokenize
from captioner.data.vocab import Vocabulary
from captioner.errors import CaptionerError
from captioner.evaluation.evaluate import caption_split
from captioner.evaluation.metrics import score_captions
from captioner.features.cache import FeatureStore
from captioner.features.extract import split_features
from captioner.model.checkpoint import load_checkpoint, model_state
from captioner.model.decoder import Decoder
from captioner.model.encoder import VGGEncoder, build_encoder
from captioner.model.inference import Captioner
from captioner.model.network import CaptionModel
from captioner.model.search import greedy
from captioner.model.unroll import GATES, gate_trace, hidden_gradient_norms, parameter_counts
from captioner.training.module import CaptionModule
from captioner.training.train import configured_encoder
from captioner.training.trainer import build_trainer
from captioner.util.atomic import write_json, write_text
from captioner.util.console import say
from captioner.util.hardware import resolve_precision
from captioner.util.runs import LATEST, latest_checkpoint

CELLS = ("rnn", "lstm", "gru")
# The fixed batch for the gradient-flow measurement: the longest validation captions.
GRAD_CAPTIONS = 32
GRAD_LOSS = ("cross-entropy of each caption's last target word only, so that at earlier steps "
             "d(loss)/d(h_t) is purely the gradient carried back through time")
TEST_METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "cider")


# -- the encoder every cell shares --------------------------------------------------------------
@dataclass(frozen=True)
class EncoderSource:
    encoder: VGGEncoder
    arch: str
    image_size: int
    resize_size: int
    origin: str  # where the weights came from, as the page says it
    checkpoint: Path | None


def encoder_checkpoint(config: Config, encoder_from: Path | None) -> Path | None:
    """The checkpoint to take the encoder from: `encoder_from`, else the latest run's, if any."""
    runs = Path(config.output_dir)
    if encoder_from is None and (runs / LATEST).is_file():
        return latest_checkpoint(runs)
    return encoder_from


def config_encoder(config: Config, data: PreparedData) -> EncoderSource:
    """The config's encoder, built as `captioner train encoder.mode=frozen` builds it (random
    weights seeded alike), so that both read the same cached features."""
    c = config.encoder
    encoder = configured_encoder(cell_config(config, config.decoder.cell), data)
    initialised = {"none": " (random initialisation, seeded)",
                   "pretrain": " (a classifier pretrained on the dataset's objects)"}.get(c.weights, "")
    return EncoderSource(encoder, c.arch, c.image_size, c.resize_size,
                         f"the config's encoder: {c.arch}, encoder.weights={c.weights}{initialised}, "
                         "no trained run to take one from", None)


def checkpoint_encoder(path: Path) -> EncoderSource:
    """The encoder of a trained checkpoint, with the architecture and image size it used."""
    checkpoint = load_checkpoint(path)
    c = from_dict(checkpoint["hyper_parameters"]["config"]).encoder
    encoder = build_encoder(c.arch, "none")
    prefix = "encoder."
    state = {k[len(prefix):]: v for k, v in model_state(checkpoint).items() if k.startswith(prefix)}
    try:
        encoder.load_state_dict(state)
    except RuntimeError as err:
        raise CaptionerError(f"{path}: its encoder weights do not fit {c.arch}") from err
    trained = "fine-tuned there" if c.mode == "finetune" else "kept frozen there"
    return EncoderSource(encoder, c.arch, c.image_size, c.resize_size,
                         f"the encoder of checkpoint {path} ({c.arch} at {c.image_size}px, started "
                         f"from encoder.weights={c.weights}, {trained})", path)


def cell_config(config: Config, cell: str, source: EncoderSource | None = None) -> Config:
    """`config` with this cell and a frozen encoder (of the source's architecture and size)."""
    config = from_dict(to_dict(config))
    config.decoder.cell = cell
    config.encoder.mode = "frozen"
    if source is not None:
        config.encoder.arch = source.arch
        config.encoder.image_size, config.encoder.resize_size = source.image_size, source.resize_size
    return validate(config)


# -- what every cell trains and is measured on, built once --------------------------------------
@dataclass
class Shared:
    vocab: Vocabulary
    train_set: CaptionSet
    val_set: CaptionSet
    test_records: list[ImageRecord]
    test_store: FeatureStore
    grad_features: Tensor  # [N, 4096]: the images of the long captions
    grad_ids: Tensor  # [N, T + 1]: <start> w1 .. wT, cut to a common length


def _features(config: Config, data: PreparedData, encoder: VGGEncoder, split: str,
              bf16: bool) -> tuple[list[ImageRecord], FeatureStore]:
    store = split_features(config, data, encoder, split, bf16=bf16)
    return [r for r in data.split(split) if r.image_id in store.row], store


def long_captions(records: Sequence[ImageRecord], store: FeatureStore, vocab: Vocabulary,
                  max_length: int, count: int = GRAD_CAPTIONS) -> tuple[Tensor, Tensor]:
    """The `count` longest captions, cut to the shortest of them: features [N, F], ids [N, T+1]."""
    encoded = [(vocab.encode(tokenize(c), max_length), r.image_id) for r in records for c in r.captions]
    encoded = sorted(encoded, key=lambda item: -len(item[0]))[:count]  # stable: ties keep file order
    length = min(len(ids) for ids, _ in encoded)
    return (torch.stack([store[image_id] for _, image_id in encoded]),
            torch.tensor([ids[:length] for ids, _ in encoded]))


def share(config: Config, data: PreparedData, encoder: VGGEncoder, vocab: Vocabulary) -> Shared:
    bf16 = resolve_precision(config) == "bf16-mixed"
    splits = {split: _features(config, data, encoder, split, bf16) for split in ("train", "val", "test")}
    d = config.data

    def caption_set(split: str) -> CaptionSet:
        # As `captioner train` on frozen features: training batches by caption, validation by image.
        records, store = splits[split]
        train = split == "train"
        return CaptionSet(records, store.of, vocab, d.max_length, d.captions_per_image,
                          training=train, by_caption=train, tokens=data.tokens)

    train_set, val_set = caption_set("train"), caption_set("val")
    grad_features, grad_ids = long_captions(*splits["val"], vocab, d.max_length)
    return Shared(vocab, train_set, val_set, *splits["test"], grad_features, grad_ids)


# -- training one cell --------------------------------------------------------------------------
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


def score_test_split(model: CaptionModel, config: Config, vocab: Vocabulary,
                records: Sequence[ImageRecord], store: FeatureStore) -> dict[str, float]:
    """BLEU-1..4 and CIDEr-D of beam-search captions, as `captioner evaluate` decodes them."""
    captioner = Captioner(model, vocab, config, next(model.decoder.parameters()).device)
    predictions = caption_split(captioner, records, store, config.eval.beam_size)
    scores = score_captions({r.image_id: r.captions for r in records}, predictions, meteor=False)
    return {k: scores.corpus[k] for k in TEST_METRICS}


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
    summary: dict[str, Any]  # what compare.json holds for the cell
    gates: GateTrace | None


def run_cell(config: Config, shared: Shared, encoder: VGGEncoder, folder: Path) -> CellRun:
    """Train one cell on the shared features; measure it before and after."""
    seed, cell = config.trainer.seed, config.decoder.cell
    L.seed_everything(seed, workers=True, verbose=False)
    module = CaptionModule(to_dict(config), shared.vocab.to_list())
    module.model.encoder = encoder  # the one the features came from; frozen, never trained here
    decoder = module.model.decoder
    counts = parameter_counts(decoder)
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
    if recorder.best_state is not None:
        decoder.load_state_dict(recorder.best_state)
    test = score_test_split(module.model, config, shared.vocab, shared.test_records, shared.test_store)
    first = shared.test_records[0]
    gates = trace_gates(decoder, config, shared.vocab, first, shared.test_store[first.image_id])
    limit = config.optim.grad_clip
    norms = recorder.grad_norms
    summary = {
        **counts,
        "epoch_seconds": _mean(recorder.train_seconds),
        "validation_seconds": _mean(recorder.val_seconds),
        "epochs": len(recorder.train_seconds),
        "val": recorder.val,
        "best_epoch": recorder.best_epoch,
        "test": test,
        "grad_norm_per_step": {"start": start, "end": end},
        # Share of optimiser steps whose gradient norm exceeded optim.grad_clip (None: clipping off).
        "clip_fraction": sum(n > limit for n in norms) / len(norms) if limit > 0 and norms else None,
        "train_grad_norm": norms,
        "gates": None if gates is None else {
            "image_id": gates.image_id, "words": gates.words,
            "mean": {name: values.mean(axis=0).tolist() for name, values in gates.values.items()},
        },
    }
    say(f"{cell}: {summary['epoch_seconds']:.1f} s/epoch, test BLEU-4 {test['bleu4']:.3f}, "
        f"CIDEr-D {test['cider']:.3f}")
    return CellRun(summary, gates)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


# -- the whole comparison -----------------------------------------------------------------------
def compare(config: Config, cells: Sequence[str], out_dir: Path, *,
            encoder_from: Path | None = None) -> dict[str, Any]:
    """Train `cells` on shared features and write out_dir/compare.json and out_dir/index.html."""
    started = time.perf_counter()
    cells = list(dict.fromkeys(cells))
    unknown = [c for c in cells if c not in CELLS]
    if not cells or unknown:
        raise CaptionerError(f"--cells: choose among {', '.join(CELLS)} (got {', '.join(cells)})")
    checkpoint = encoder_checkpoint(config, encoder_from)
    source = checkpoint_encoder(checkpoint) if checkpoint is not None else None
    data = prepare(config)
    source = source or config_encoder(config, data)
    say(f"encoder: {source.origin}")
    base = cell_config(config, config.decoder.cell, source)
    vocab = build_vocab(data, base.data.min_count)
    clock = time.perf_counter()
    shared = share(base, data, source.encoder, vocab)
    feature_seconds = time.perf_counter() - clock  # extraction, or reading the cache
    runs = {}
    for n, cell in enumerate(cells, start=1):
        say(f"training the {cell} decoder ({n}/{len(cells)})")
        runs[cell] = run_cell(cell_config(config, cell, source), shared, source.encoder, out_dir / cell)
    result = {
        "cells": {cell: run.summary for cell, run in runs.items()},
        "settings": _settings(base, cells, shared),
        "encoder": {"origin": source.origin, "checkpoint": None if checkpoint is None else str(checkpoint),
                    "arch": source.arch, "image_size": source.image_size, "frozen": True,
                    "params": sum(p.numel() for p in source.encoder.parameters())},
        "grad_flow": {"loss": GRAD_LOSS, "split": "val", "captions": len(shared.grad_ids),
                      "steps": shared.grad_ids.shape[1] - 1},
        "seconds": {"features": feature_seconds, "total": time.perf_counter() - started},
    }
    write_json(out_dir / "compare.json", result)
    write_text(out_dir / "index.html",
               render_compare_page(result, [run.gates for run in runs.values() if run.gates]))
    return result


def _settings(config: Config, cells: list[str], shared: Shared) -> dict[str, Any]:
    d, o, t = config.decoder, config.optim, config.trainer
    return {
        "cells": cells, "dataset": config.data.dataset, "max_epochs": t.max_epochs, "seed": t.seed,
        "train_images": len(shared.train_set.records), "train_captions": len(shared.train_set),
        "val_images": len(shared.val_set),
        "test_images": len(shared.test_records), "batch_size": config.data.batch_size,
        "embed_dim": d.embed_dim, "hidden_dim": d.hidden_dim, "num_layers": d.num_layers,
        "dropout": d.dropout, "lr": o.lr, "grad_clip": o.grad_clip, "monitor": t.monitor,
        "beam_size": config.eval.beam_size, "precision": resolve_precision(config),
        "limit_train_batches": t.limit_train_batches,
    }
