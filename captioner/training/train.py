"""`captioner train`: data -> encoder -> features -> Lightning fit -> best checkpoint -> report.

The default run is the classic show-and-tell pipeline end to end: a VGG pretrained as a
classifier (captioner.training.pretrain, the stand-in for ImageNet) loses its classifier, its fc7 of every
image is extracted once into the feature cache, and the decoder trains on those features; the
best checkpoint is scored on the test split and the report written. The COCO configs run the same
path with ImageNet weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping

from captioner.config import Config, monitor_mode, to_dict, to_yaml
from captioner.data.datamodule import CaptionDataModule, CaptionSet, image_inputs
from captioner.data.prepare import PreparedData, build_vocab, prepare
from captioner.data.vocab import Vocabulary
from captioner.errors import CaptionerError
from captioner.evaluation.cider_reward import CaptionRewards
from captioner.features.extract import split_features
from captioner.model.checkpoint import (
    check_weights_fit,
    checkpoint_config,
    load_checkpoint,
    model_state,
    resume_config,
)
from captioner.model.encoder import VGGEncoder, build_encoder, build_preprocess, weights_file
from captioner.model.stored_encoder import RECORD, locate, store
from captioner.training.module import CaptionModule
from captioner.training.pretrain import cached_encoder
from captioner.training.self_critical import MONITOR, PHASE, SELF_CRITICAL, SelfCriticalModule, check
from captioner.training.trainer import build_trainer, fit
from captioner.util import atomic
from captioner.util.console import say
from captioner.util.hardware import resolve_precision
from captioner.util.runs import (
    best_checkpoint,
    claim_run_dir,
    global_rank,
    kept_on_failure,
    mark_latest,
    run_dir_of,
)

RUN_DIR_ENV = "CAPTIONER_RUN_DIR"


@dataclass
class TrainResult:
    run_dir: Path
    best: Path
    metrics: dict
    report: Path
    before: TrainResult | None = None  # the cross-entropy run a self-critical phase started from


def encoder_weights(config: Config, data: PreparedData) -> str:
    """What encoder.weights names, with "pretrain" resolved to the cached classifier's weights."""
    if config.encoder.weights == "pretrain":
        return str(cached_encoder(config, data))
    return config.encoder.weights


def encoder_source(config: Config, weights: str) -> Path | None:
    """The file a run's starting encoder weights come from; None for random weights."""
    if weights == "none":
        return None
    return weights_file(config.encoder.arch) if weights == "imagenet" else Path(weights).expanduser()


def configured_encoder(config: Config, data: PreparedData) -> VGGEncoder:
    """The encoder a run with this config starts from (pretrained first if it asks for that)."""
    return build_encoder(config.encoder.arch, encoder_weights(config, data), seed=config.trainer.seed)


def datasets(config: Config, data: PreparedData, encoder: VGGEncoder, vocab: Vocabulary,
             bf16: bool, by_image: bool = False) -> tuple[CaptionSet, CaptionSet]:
    """Train and val sets: cached fc7 features (frozen encoder) or preprocessed images; training
    items by image when `by_image` (self-critical training samples its own captions per image)."""
    c, d = config.encoder, config.data
    sets = []
    for split in ("train", "val"):
        records = data.split(split)
        if c.mode == "frozen":
            # Under DDP every rank gets here before `fit`; rank 0 first (Lightning starts the other
            # ranks later), so it extracts and the others find the cache ready.
            store = split_features(config, data, encoder, split, bf16=bf16)
            records = [r for r in records if r.image_id in store.row]
            inputs = store.of
        else:
            inputs = image_inputs(build_preprocess(c.arch, c.image_size, c.resize_size))
        train = split == "train"
        sets.append(CaptionSet(records, inputs, vocab, d.max_length, d.captions_per_image, training=train,
                               by_caption=train and c.mode == "frozen" and not by_image,
                               tokens=data.tokens))
    return sets[0], sets[1]


@dataclass
class RunStart:
    """Where a run trains, and for a resumed run what it continues from."""

    config: Config
    run_dir: Path
    claimed: bool = False  # whether this process created run_dir (and may remove it if nothing is kept)
    vocab: Vocabulary | None = None  # a resumed run's; None: built from the data
    resume: Path | None = None  # the checkpoint it continues
    resume_step: int | None = None
    weights: dict | None = None  # the resumed model's weights
    encoder_file: Path | None = None  # the file a resumed frozen run's encoder came from
    self_critical: bool = False  # trains by self-critical policy gradient, not cross-entropy


def new_run(config: Config) -> RunStart:
    """A new run folder (rank 0), or the one rank 0 claimed (ranks Lightning's launcher started)."""
    if global_rank() != 0:
        # Only rank 0 writes into the run folder; the other ranks learn it from the launcher's
        # environment where there is one, and otherwise never need it.
        fallback = Path(config.output_dir) / config.name
        return RunStart(config, Path(os.environ.get(RUN_DIR_ENV, fallback)))
    run_dir = claim_run_dir(Path(config.output_dir), config.name)
    os.environ[RUN_DIR_ENV] = str(run_dir)  # Lightning's launcher copies the environment to the ranks
    return RunStart(config, run_dir, claimed=True)


def _resumed_run(resume: Path, overrides: list[str]) -> RunStart:
    """Continue a run: its own config (plus overrides, e.g. more epochs), vocabulary and folder.

    A checkpoint outside a run folder (a copy in ~/Downloads, say) continues in a new run folder
    rather than turning the folder it lies in into one.
    """
    checkpoint = load_checkpoint(resume)
    config, vocab = resume_config(checkpoint, resume, overrides)
    run_dir = run_dir_of(resume)
    start = new_run(config) if run_dir is None else RunStart(config, run_dir)
    if run_dir is None and global_rank() == 0:
        say(f"{resume} is not inside a run folder: continuing it in {start.run_dir}")
    start.vocab, start.resume, start.resume_step = vocab, resume, int(checkpoint["global_step"])
    start.weights = model_state(checkpoint)
    if isinstance(checkpoint.get(RECORD), dict):
        start.encoder_file = locate(checkpoint[RECORD], resume)
    start.self_critical = checkpoint.get(PHASE) == SELF_CRITICAL
    return start


def self_critical_run(checkpoint_path: Path, overrides: list[str]) -> RunStart:
    """A new run that fine-tunes a checkpoint's weights self-critically (scst.epochs epochs), in
    output_dir/<name>-scst unless the overrides name it."""
    checkpoint = load_checkpoint(checkpoint_path)
    config, vocab, _ = checkpoint_config(checkpoint, checkpoint_path, overrides)
    weights = model_state(checkpoint)
    check_weights_fit(config, vocab, weights, checkpoint_path)
    check(config)
    if config.scst.epochs < 1:
        raise CaptionerError("scst.epochs is 0: say how many self-critical epochs, e.g. scst.epochs=5")
    if not any(item.startswith("name=") for item in overrides):
        config.name = f"{config.name}-scst"
    start = new_run(config)
    start.vocab, start.weights, start.self_critical = vocab, weights, True
    if isinstance(checkpoint.get(RECORD), dict):
        start.encoder_file = locate(checkpoint[RECORD], checkpoint_path)
    return start


def train(config: Config | None, *, resume: Path | None = None, overrides: list[str] | None = None,
          evaluate_after: bool = True) -> TrainResult:
    """Train a captioner (or continue one from `resume`) and, on rank 0, evaluate its best
    checkpoint; with scst.epochs > 0 a self-critical run then fine-tunes that checkpoint."""
    if config is not None:
        check(config)
    start = _resumed_run(resume, overrides or []) if resume is not None else new_run(config)
    result = train_run(start, evaluate_after)
    if start.self_critical or start.config.scst.epochs < 1:
        return result
    # Every rank goes on (DDP ranks take part in the next fit); rank 0 names the checkpoint.
    best = best_checkpoint(start.run_dir)
    after = train_run(self_critical_run(best, [f"name={start.config.name}-scst"]), evaluate_after)
    after.before = result
    return after


def train_run(start: RunStart, evaluate_after: bool = True) -> TrainResult:
    """Fit one run (cross-entropy or self-critical) and, on rank 0, evaluate its best checkpoint."""
    command = "captioner train"
    with kept_on_failure(start.run_dir, start.claimed, command):
        best = _fit(start)
    if best is None:  # not rank 0
        return TrainResult(start.run_dir, Path(), {}, Path())
    if not evaluate_after:
        return TrainResult(start.run_dir, best, {}, Path())
    from captioner.evaluation.evaluate import evaluate

    metrics, report = evaluate(best, split=start.config.eval.split)
    return TrainResult(start.run_dir, best, metrics, report)


def _keep_encoder(start: RunStart, module: CaptionModule, starting_weights: str) -> None:
    """A frozen run keeps its encoder once, in the run folder; its checkpoints name that file."""
    c = start.config.encoder
    from_checkpoint = start.weights is not None
    source = start.encoder_file if from_checkpoint else encoder_source(start.config, starting_weights)
    meta = {"arch": c.arch, "image_size": c.image_size, "resize_size": c.resize_size}
    module.stored_encoder = store(start.run_dir, module.model.encoder, source, meta)


def _trainer(start: RunStart, config: Config, run_dir: Path) -> L.Trainer:
    """Cross-entropy: trainer.max_epochs, best by trainer.monitor, early stopping with patience.
    Self-critical: scst.epochs, best by validation CIDEr-D."""
    t = config.trainer
    if start.self_critical:
        return build_trainer(config, run_dir, [], monitor=MONITOR, what="self-critical training",
                             resume_step=start.resume_step, max_epochs=config.scst.epochs)
    callbacks: list[L.Callback] = []
    if t.patience > 0:
        callbacks.append(EarlyStopping(monitor=t.monitor, mode=monitor_mode(t.monitor), patience=t.patience))
    return build_trainer(config, run_dir, callbacks, monitor=t.monitor, what="training",
                         resume_step=start.resume_step)


def _fit(start: RunStart) -> Path | None:
    """Build everything and fit; the best checkpoint on rank 0, None elsewhere."""
    config, run_dir = start.config, start.run_dir
    data = prepare(config)
    vocab = start.vocab or build_vocab(data, config.data.min_count)
    if global_rank() == 0:
        atomic.write_text(run_dir / "config.yaml", to_yaml(config))
    precision = resolve_precision(config)
    # A run from a checkpoint takes every weight from it: no pretraining, no ImageNet file.
    starting_weights = "none" if start.weights is not None else encoder_weights(config, data)
    # Seeded here, after any pretraining, so the decoder starts the same whether or not this
    # process pretrained the encoder first.
    L.seed_everything(config.trainer.seed, workers=True, verbose=False)
    kind = SelfCriticalModule if start.self_critical else CaptionModule
    module = kind(to_dict(config), vocab.to_list(), encoder_weights=starting_weights)
    if start.weights is not None:  # now, not at fit: a frozen run's features come from this encoder
        module.model.load_state_dict(start.weights)
    if config.encoder.mode == "frozen" and global_rank() == 0:
        _keep_encoder(start, module, starting_weights)
    train_set, val_set = datasets(config, data, module.model.encoder, vocab, bf16=precision == "bf16-mixed",
                                  by_image=start.self_critical)
    if isinstance(module, SelfCriticalModule):  # the training references, counted once
        module.rewards = CaptionRewards({r.image_id: data.tokens(r) for r in train_set.records},
                                        vocab.to_list())
    datamodule = CaptionDataModule(train_set, val_set, batch_size=config.data.batch_size,
                                   num_workers=config.data.num_workers, seed=config.trainer.seed)
    trainer = _trainer(start, config, run_dir)
    what = "self-critical training" if start.self_critical else "training"
    say(f"{what}: {config.decoder.cell} decoder on {config.encoder.arch} "
        f"({config.encoder.mode}, {config.encoder.image_size}px, {precision}) into {run_dir}")
    fit(trainer, module, datamodule, resume=start.resume)
    if not trainer.is_global_zero:
        return None
    mark_latest(run_dir)
    return best_checkpoint(run_dir)
