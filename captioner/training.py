"""`captioner train`: data -> model -> Lightning fit -> best checkpoint -> test-split report."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger

from captioner import atomic
from captioner.checkpoint import load_checkpoint
from captioner.concepts import visual_concepts
from captioner.config import Config, load_config, monitor_mode, to_dict, to_yaml
from captioner.data.datamodule import CaptionDataModule, CaptionSet, feature_inputs, image_inputs
from captioner.data.prepare import PreparedData, build_vocab, prepare
from captioner.data.tokenize import tokenize
from captioner.data.vocab import Vocabulary
from captioner.encoder import VGGEncoder, build_preprocess, fast_bf16
from captioner.extract import split_features
from captioner.module import CaptionModule
from captioner.runs import best_checkpoint, mark_latest, new_run_dir, run_dir_of

RUN_DIR_ENV = "CAPTIONER_RUN_DIR"


@dataclass
class TrainResult:
    run_dir: Path
    best: Path
    metrics: dict
    report: Path


def resolve_precision(config: Config) -> str:
    """bf16 autocast where it is fast (AMX/AVX512-BF16 CPUs, recent GPUs), else full fp32."""
    if config.trainer.precision != "auto":
        return config.trainer.precision
    accelerator = config.trainer.accelerator
    use_cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return "bf16-mixed" if fast_bf16(torch.device("cuda" if use_cuda else "cpu")) else "32-true"


def datasets(config: Config, data: PreparedData, encoder: VGGEncoder, vocab: Vocabulary,
             bf16: bool, concepts: Sequence[str] = ()) -> tuple[CaptionSet, CaptionSet]:
    """Train and val sets: cached fc7 features (frozen encoder) or preprocessed images.

    `concepts`: the auxiliary loss's targets, which only the training set carries.
    """
    c = config.encoder
    sets = []
    for split in ("train", "val"):
        records = data.split(split)
        if c.mode == "frozen":
            # Under DDP every rank gets here before `fit`; rank 0 first (Lightning starts the other
            # ranks later), so it extracts and the others find the cache ready.
            store = split_features(config, data, encoder, split, bf16=bf16)
            records = [r for r in records if r.image_id in store.row]
            inputs = feature_inputs(store)
        else:
            inputs = image_inputs(build_preprocess(c.arch, c.image_size, c.resize_size))
        train = split == "train"
        sets.append(CaptionSet(records, inputs, vocab, config.data.max_length,
                               config.data.captions_per_image, concepts if train else (),
                               config.optim.concept_window, by_caption=train and c.mode == "frozen"))
    return sets[0], sets[1]


class BestAndLast(ModelCheckpoint):
    """best.ckpt by the monitored metric, and last.ckpt holding the latest state.

    Lightning's save_last="link" links last.ckpt to the newest file it saved, which after an
    epoch that did not improve is an older best: a resume would go back in time. Here last.ckpt
    links to best.ckpt only when that was written at this very step (saving one 600 MB write),
    and is a file of its own otherwise.
    """

    def __init__(self, dirpath: Path, monitor: str) -> None:
        super().__init__(dirpath=dirpath, filename="best", monitor=monitor, mode=monitor_mode(monitor),
                         save_top_k=1,
                         save_last="link", enable_version_counter=False, auto_insert_metric_name=False)

    def _save_last_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict) -> None:
        if self._last_global_step_saved == trainer.global_step:  # best.ckpt is this very state
            return super()._save_last_checkpoint(trainer, monitor_candidates)
        self.save_last = True
        try:
            super()._save_last_checkpoint(trainer, monitor_candidates)
        finally:
            self.save_last = "link"


class DecoderOnlyBatches(L.Callback):
    """Once the model remembers every image's fc7: stop decoding images, and batch by caption.

    After encoder.freeze_after_epoch the CaptionModule keeps each image's fc7 (computed in the
    first frozen epoch, training and validation). From the next epoch on, loading and
    preprocessing the images would only be thrown away, and nothing ties a batch's captions to a
    few images any more (captioner.data.datamodule). The sets change at an epoch's end, after its
    validation; Lightning rebuilds the loaders at the next epoch's start
    (reload_dataloaders_every_n_epochs, which build_trainer sets for runs that freeze).
    """

    def __init__(self, train_set: CaptionSet, val_set: CaptionSet) -> None:
        self.train_set, self.val_set = train_set, val_set

    def on_train_epoch_end(self, trainer: L.Trainer, module: CaptionModule) -> None:
        # Under DDP each rank remembers the images of its own shards: switch only when every rank
        # can, since batching by caption changes the set's length and ranks must agree on it.
        if trainer.strategy.reduce_boolean_decision(module.remembers(self.train_set.image_ids), all=True):
            self.train_set.load_inputs, self.train_set.by_caption = False, True
        if module.remembers(self.val_set.image_ids):
            self.val_set.load_inputs = False


def freezes_mid_run(config: Config) -> bool:
    """Whether the fine-tuned CNN stops training before the last epoch (encoder.freeze_after_epoch)."""
    after = config.encoder.freeze_after_epoch
    return config.encoder.mode == "finetune" and 0 < after < config.trainer.max_epochs


def _strategy(config: Config) -> str:
    """trainer.strategy, made to tolerate a CNN that stops training mid-run under DDP.

    DDP expects a gradient for every weight it was built with; after encoder.freeze_after_epoch
    the CNN's (and the concept head's) get none, so DDP must look for unused parameters.
    """
    strategy = config.trainer.strategy
    return "ddp_find_unused_parameters_true" if strategy == "ddp" and freezes_mid_run(config) else strategy


def build_trainer(config: Config, folder: Path, callbacks: list[L.Callback], **overrides) -> L.Trainer:
    """The Trainer every training run uses (CSV logs in folder/logs); `overrides` adjust it."""
    t = config.trainer
    settings = {
        "default_root_dir": folder, "max_epochs": t.max_epochs, "accelerator": t.accelerator,
        "devices": int(t.devices) if t.devices.isdigit() else t.devices, "num_nodes": t.num_nodes,
        "strategy": _strategy(config),
        "precision": resolve_precision(config),  # CaptionModule clips gradients itself
        "callbacks": [*callbacks, TQDMProgressBar(refresh_rate=10),
                      LearningRateMonitor(logging_interval="step")],
        "logger": CSVLogger(folder, name="logs", version=""),
        "limit_train_batches": t.limit_train_batches, "limit_val_batches": t.limit_val_batches,
        "log_every_n_steps": t.log_every_n_steps, "enable_model_summary": False,
        # DecoderOnlyBatches changes the training set's batching once the CNN is frozen.
        "reload_dataloaders_every_n_epochs": 1 if freezes_mid_run(config) else 0,
    }
    return L.Trainer(**(settings | overrides))


def training_concepts(config: Config, data: PreparedData, vocab: Vocabulary) -> list[str]:
    """The auxiliary loss's visual concepts (captioner.concepts), when fine-tuning uses them."""
    if config.encoder.mode != "finetune" or config.optim.concept_weight <= 0:
        return []
    captions = ([tokenize(c) for c in record.captions] for record in data.split("train"))
    concepts = visual_concepts(captions, vocab, config.optim.concept_agreement,
                               window=config.optim.concept_window)
    if concepts:
        print(f"auxiliary visual concepts ({len(concepts)}, stemmed): " + ", ".join(concepts),
              file=sys.stderr)
    else:
        print("auxiliary concept loss off: no word reaches optim.concept_agreement="
              f"{config.optim.concept_agreement} in the training captions", file=sys.stderr)
    return concepts


def _resume_setup(resume: Path, overrides: list[str]) -> tuple[Config, Vocabulary, list[str], Path]:
    """Continue a run: its own config (plus overrides, e.g. more epochs), vocabulary and folder."""
    checkpoint = load_checkpoint(resume)
    hparams = checkpoint["hyper_parameters"]
    config = load_config(None, overrides, base=hparams["config"])
    run_dir = run_dir_of(resume) or resume.resolve().parent
    return config, Vocabulary(hparams["vocab"]), hparams.get("concepts") or [], run_dir


def _is_rank_zero() -> bool:
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def _run_dir(config: Config) -> Path:
    """A new runs/<name>; DDP ranks that Lightning's launcher starts reuse rank 0's folder."""
    if not _is_rank_zero() and os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    run_dir = new_run_dir(Path(config.output_dir), config.name)
    os.environ[RUN_DIR_ENV] = str(run_dir)  # the launcher copies the environment to the ranks
    return run_dir


def train(config: Config | None, *, resume: Path | None = None, overrides: list[str] | None = None,
          evaluate_after: bool = True) -> TrainResult:
    if resume is not None:
        config, vocab, concepts, run_dir = _resume_setup(resume, overrides or [])
    else:
        vocab, concepts, run_dir = None, None, _run_dir(config)
    L.seed_everything(config.trainer.seed, workers=True, verbose=False)
    data = prepare(config)
    vocab = vocab or build_vocab(data, config.data.min_count)
    if _is_rank_zero():
        atomic.write_text(run_dir / "config.yaml", to_yaml(config))

    precision = resolve_precision(config)
    if concepts is None:
        concepts = training_concepts(config, data, vocab)
    module = CaptionModule(to_dict(config), vocab.to_list(), concepts=concepts)
    train_set, val_set = datasets(config, data, module.model.encoder, vocab,
                                  bf16=precision == "bf16-mixed", concepts=concepts)
    datamodule = CaptionDataModule(train_set, val_set, batch_size=config.data.batch_size,
                                   num_workers=config.data.num_workers)
    t = config.trainer
    checkpoints = BestAndLast(run_dir / "checkpoints", t.monitor)
    callbacks: list[L.Callback] = [checkpoints]
    if freezes_mid_run(config):  # the condition under which build_trainer reloads the loaders
        callbacks.append(DecoderOnlyBatches(train_set, val_set))
    if t.patience > 0:
        callbacks.append(EarlyStopping(monitor=t.monitor, mode=monitor_mode(t.monitor), patience=t.patience))
    trainer = build_trainer(config, run_dir, callbacks)
    print(f"training {config.decoder.cell} decoder on {config.encoder.arch} "
          f"({config.encoder.mode}, {config.encoder.image_size}px, {precision}) into {run_dir}",
          file=sys.stderr)
    trainer.fit(module, datamodule, ckpt_path=resume)
    if not trainer.is_global_zero:
        return TrainResult(run_dir, Path(), {}, Path())
    best = best_checkpoint(run_dir)
    mark_latest(run_dir)
    if not evaluate_after:
        return TrainResult(run_dir, best, {}, Path())
    from captioner.evaluation import evaluate

    metrics, report = evaluate(best, split=config.eval.split)
    return TrainResult(run_dir, best, metrics, report)

