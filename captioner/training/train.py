"""`captioner train`: data -> encoder -> features -> Lightning fit -> best checkpoint -> report.

The default run is the classic show-and-tell pipeline end to end: a VGG pretrained as a
classifier (captioner.training.pretrain, the stand-in for ImageNet) loses its classifier, its fc7 of every
image is extracted once into the feature cache, and the decoder trains on those features; the
best checkpoint is scored on the test split and the report written. The COCO configs run the same
path with ImageNet weights.

`train(config)` starts a run, `resume(checkpoint, overrides)` continues one, `finetune` starts a
self-critical run from a checkpoint. Every process of a distributed run calls them; rank 0 gets
the TrainResult, the others None.
"""

from __future__ import annotations

from collections.abc import Sequence
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
from captioner.evaluation.mentions import ObjectIndex, load_object_index
from captioner.evaluation.records import EvaluationMetrics
from captioner.features.extract import split_features
from captioner.model.checkpoint import (
    CheckpointMeta,
    check_weights_fit,
    checkpoint_config,
    load_checkpoint,
    model_state,
    resume_config,
)
from captioner.model.encoder import VGGEncoder, build_preprocess, weights_file
from captioner.model.stored_encoder import locate, store
from captioner.training.adapters import fit
from captioner.training.module import CaptionModule
from captioner.training.pretrain import cached_encoder
from captioner.training.self_critical import MONITOR, CollapseStop, SelfCriticalModule, check
from captioner.training.trainer import build_trainer
from captioner.util import atomic
from captioner.util.console import say
from captioner.util.hardware import resolve_precision
from captioner.util.interrupts import held_interrupt
from captioner.util.launch import launch
from captioner.util.runs import best_checkpoint, claim_run_dir, kept_on_failure, mark_latest, run_dir_of


@dataclass
class TrainResult:
    run_dir: Path
    best: Path
    metrics: EvaluationMetrics | None  # None: not evaluated (--no-eval)
    report: Path
    before: TrainResult | None = None  # the cross-entropy run a self-critical phase started from


def prepare_encoder_weights(config: Config, data: PreparedData) -> str:
    """A run's first stage: encoder.weights as build_encoder takes it. For "pretrain" that is a
    whole Lightning fit of the VGG classifier on this data, unless the cache or the package holds
    its weights already (captioner.training.pretrain.cached_encoder)."""
    if config.encoder.weights == "pretrain":
        return str(cached_encoder(config, data))
    return config.encoder.weights


def encoder_source(config: Config, weights: str) -> Path | None:
    """The file a run's starting encoder weights come from; None for random weights."""
    if weights == "none":
        return None
    return weights_file(config.encoder.arch) if weights == "imagenet" else Path(weights).expanduser()


def datasets(config: Config, data: PreparedData, encoder: VGGEncoder, vocab: Vocabulary,
             by_image: bool = False) -> tuple[CaptionSet, CaptionSet]:
    """Train and val sets: cached fc7 features (frozen encoder) or preprocessed images; training
    items by image when `by_image` (self-critical training samples its own captions per image)."""
    c, d = config.encoder, config.data
    sets = []
    for split in ("train", "val"):
        records = data.split(split)
        if c.mode == "frozen":
            # Under DDP every rank gets here before `fit`; rank 0 first (Lightning starts the other
            # ranks later), so it extracts and the others find the cache ready.
            store = split_features(config, data, encoder, split)
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
    """A new run folder, claimed by rank 0. The other ranks write nothing into it and cannot learn
    its name before a process group exists: they hold the name they would have claimed, and the
    trainer gives them rank 0's folder once fit starts (adapters.RunFolder)."""
    if launch().rank != 0:
        return RunStart(config, Path(config.output_dir) / config.name)
    with held_interrupt(deliver=False) as interrupted:  # claimed whole, lock and mark included
        run_dir = claim_run_dir(Path(config.output_dir), config.name)
    if interrupted:  # Ctrl-C came while claiming: as one before the first checkpoint
        with kept_on_failure(run_dir, True, "captioner train"):
            raise KeyboardInterrupt
    return RunStart(config, run_dir, claimed=True)


def _resumed_run(resume: Path, overrides: list[str]) -> RunStart:
    """Continue a run: its own config (plus overrides, e.g. more epochs), vocabulary and folder.

    A checkpoint outside a run folder (a copy in ~/Downloads, say) continues in a new run folder
    rather than turning the folder it lies in into one.
    """
    checkpoint = load_checkpoint(resume)
    config, vocab = resume_config(checkpoint, resume, overrides)
    check(config)  # the overrides may change the self-critical settings
    run_dir = run_dir_of(resume)
    start = new_run(config) if run_dir is None else RunStart(config, run_dir)
    if run_dir is None and launch().rank == 0:
        say(f"{resume} is not inside a run folder: continuing it in {start.run_dir}")
    start.vocab, start.resume, start.resume_step = vocab, resume, int(checkpoint["global_step"])
    start.weights = model_state(checkpoint)
    meta = CheckpointMeta.from_json(checkpoint, resume)
    if meta.encoder is not None:
        start.encoder_file = locate(meta.encoder, resume)
    start.self_critical = meta.self_critical
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
    encoder = CheckpointMeta.from_json(checkpoint, checkpoint_path).encoder
    if encoder is not None:
        start.encoder_file = locate(encoder, checkpoint_path)
    return start


def train(config: Config, *, evaluate_after: bool = True) -> TrainResult | None:
    """Train a new captioner and, on rank 0, evaluate its best checkpoint; with scst.epochs > 0 a
    self-critical run then fine-tunes that checkpoint. None on the other ranks."""
    check(config)
    return _phases(new_run(config), evaluate_after)


def resume(checkpoint: Path, overrides: Sequence[str] = (), *,
           evaluate_after: bool = True) -> TrainResult | None:
    """Continue the run `checkpoint` belongs to (its own config, plus `overrides`, e.g. more
    epochs), then as `train`."""
    return _phases(_resumed_run(checkpoint, list(overrides)), evaluate_after)


def finetune(checkpoint: Path, overrides: Sequence[str] = (), *,
             evaluate_after: bool = True) -> TrainResult | None:
    """`captioner finetune`: a new self-critical run from `checkpoint`'s weights."""
    return train_run(self_critical_run(checkpoint, list(overrides)), evaluate_after)


def _phases(start: RunStart, evaluate_after: bool) -> TrainResult | None:
    best = _train(start)
    result = _evaluated(start, best, evaluate_after)
    if start.self_critical or start.config.scst.epochs < 1:
        return result
    # Every rank goes on (DDP ranks take part in the next fit), from the checkpoint rank 0 named.
    after = train_run(self_critical_run(best, [f"name={start.config.name}-scst"]), evaluate_after)
    if after is not None:
        after.before = result
    return after


def train_run(start: RunStart, evaluate_after: bool = True) -> TrainResult | None:
    """Fit one run (cross-entropy or self-critical) and, on rank 0, evaluate its best checkpoint;
    None on the other ranks."""
    return _evaluated(start, _train(start), evaluate_after)


def _train(start: RunStart) -> Path:
    """Fit; the best checkpoint, on every rank."""
    with kept_on_failure(start.run_dir, start.claimed, "captioner train"):
        return _fit(start)


def _evaluated(start: RunStart, best: Path, evaluate_after: bool) -> TrainResult | None:
    if launch().rank != 0:  # rank 0 evaluates and reports
        return None
    if not evaluate_after:
        return TrainResult(start.run_dir, best, None, Path())
    from captioner.evaluation.evaluate import evaluate

    metrics, report = evaluate(best, split=start.config.eval.split)
    return TrainResult(start.run_dir, best, metrics, report)


def _training_objects(data: PreparedData) -> ObjectIndex:
    """The annotated objects the object term of the reward compares captions with; refused
    unless every training image is in an instances file (a missing one would add a constant 0
    to some images' rewards and not others')."""
    if not data.instances:
        raise CaptionerError(f"scst.object_weight needs the training images' object annotations (COCO "
                             f"instances files, data.instances_json): none found under {data.root}")
    objects = load_object_index(data.instances)
    records = data.split("train")
    missing = sum(not objects.covers(r.image_id) for r in records)
    if missing:
        raise CaptionerError(f"scst.object_weight: {missing} of {len(records)} training images are in no "
                             f"instances file ({', '.join(str(p) for p in data.instances)})")
    return objects


def _keep_encoder(start: RunStart, module: CaptionModule, starting_weights: str) -> None:
    """A frozen run keeps its encoder once, in the run folder; its checkpoints name that file."""
    c = start.config.encoder
    from_checkpoint = start.weights is not None
    source = start.encoder_file if from_checkpoint else encoder_source(start.config, starting_weights)
    meta = {"arch": c.arch, "image_size": c.image_size, "resize_size": c.resize_size}
    module.stored_encoder = store(start.run_dir, module.model.encoder, source, meta)


def _trainer(start: RunStart, config: Config, run_dir: Path) -> L.Trainer:
    """Cross-entropy: trainer.max_epochs, best by trainer.monitor, early stopping with patience.
    Self-critical: scst.epochs, best by validation CIDEr-D, stopped if the policy collapses."""
    t = config.trainer
    if start.self_critical:
        advice = "scst.baseline=mean may hold longer; " if config.scst.baseline == "greedy" else ""
        return build_trainer(config, run_dir, [CollapseStop(config.scst.stop_below, advice)], monitor=MONITOR,
                             what="self-critical training", resume_step=start.resume_step,
                             max_epochs=config.scst.epochs)
    callbacks: list[L.Callback] = []
    if t.patience > 0:
        callbacks.append(EarlyStopping(monitor=t.monitor, mode=monitor_mode(t.monitor), patience=t.patience))
    return build_trainer(config, run_dir, callbacks, monitor=t.monitor, what="training",
                         resume_step=start.resume_step)


def _fit(start: RunStart) -> Path:
    """Build everything and fit; the best checkpoint (rank 0's, on every rank)."""
    config, run_dir = start.config, start.run_dir
    data = prepare(config)
    # Checked before any training: a cross-entropy phase would otherwise run first and be wasted.
    self_critical_ahead = start.self_critical or config.scst.epochs > 0
    objects = _training_objects(data) if config.scst.object_weight > 0 and self_critical_ahead else None
    vocab = start.vocab or build_vocab(data, config.data.min_count)
    if launch().rank == 0:
        atomic.write_text(run_dir / "config.yaml", to_yaml(config))
    precision = resolve_precision(config)
    # The encoder's starting weights; for encoder.weights=pretrain, the classifier pretraining.
    # A run from a checkpoint takes every weight from it: no pretraining, no ImageNet file.
    starting_weights = "none" if start.weights is not None else prepare_encoder_weights(config, data)
    # Seeded here, after any pretraining, so the decoder starts the same whether or not this
    # process pretrained the encoder first.
    L.seed_everything(config.trainer.seed, workers=True, verbose=False)
    kind = SelfCriticalModule if start.self_critical else CaptionModule
    module = kind(to_dict(config), vocab.to_list(), encoder_weights=starting_weights)
    if start.weights is not None:  # now, not at fit: a frozen run's features come from this encoder
        module.model.load_state_dict(start.weights)
    if config.encoder.mode == "frozen" and launch().rank == 0:
        _keep_encoder(start, module, starting_weights)
    train_set, val_set = datasets(config, data, module.model.encoder, vocab, by_image=start.self_critical)
    if isinstance(module, SelfCriticalModule):  # the training references, counted once
        module.rewards = CaptionRewards({r.image_id: data.tokens(r) for r in train_set.records},
                                        vocab.to_list())
        module.objects = objects
    datamodule = CaptionDataModule(train_set, val_set, batch_size=config.data.batch_size,
                                   num_workers=config.data.num_workers, seed=config.trainer.seed)
    trainer = _trainer(start, config, run_dir)
    what = "self-critical training" if start.self_critical else "training"
    if launch().rank == 0:  # Lightning's launcher reruns this in the other ranks' processes
        say(f"{what}: {config.decoder.cell} decoder on {config.encoder.arch} "
            f"({config.encoder.mode}, {config.encoder.image_size}px, {precision}) into {run_dir}")
    fit(trainer, module, datamodule, resume=start.resume)
    if trainer.is_global_zero:
        mark_latest(run_dir)
    # The other ranks learn rank 0's checkpoint from it: they may never have known its folder.
    return Path(trainer.strategy.broadcast(str(best_checkpoint(run_dir)) if trainer.is_global_zero else None))
