"""`captioner train`: data -> model -> Lightning fit -> best checkpoint -> test-split report."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger

from captioner import atomic
from captioner.checkpoint import load_checkpoint
from captioner.config import Config, load_config, to_dict, to_yaml
from captioner.data.datamodule import CaptionDataModule, CaptionSet, feature_inputs, image_inputs
from captioner.data.prepare import PreparedData, build_vocab, cache_dir, prepare
from captioner.data.vocab import Vocabulary
from captioner.encoder import build_preprocess, fast_bf16
from captioner.features import load_or_extract
from captioner.module import CaptionModule
from captioner.runs import best_checkpoint, mark_latest, new_run_dir, run_dir_of


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


def _datasets(config: Config, data: PreparedData, module: CaptionModule,
              vocab: Vocabulary, bf16: bool) -> tuple[CaptionSet, CaptionSet]:
    c = config.encoder
    sets = []
    for split in ("train", "val"):
        records = data.split(split)
        if c.mode == "frozen":
            preprocess = build_preprocess(c.arch, c.image_size, c.resize_size)
            store = load_or_extract(
                module.model.encoder, preprocess, records, cache_dir(config), split=split,
                arch=c.arch, image_size=c.image_size, dataset=str(data.root),
                batch_size=config.eval.batch_size, num_workers=config.data.num_workers, bf16=bf16)
            records = [r for r in records if r.image_id in store.row]
            inputs = feature_inputs(store)
        else:
            inputs = image_inputs(build_preprocess(c.arch, c.image_size, c.resize_size))
        sets.append(CaptionSet(records, inputs, vocab, config.data.max_length,
                               config.data.captions_per_image))
    return sets[0], sets[1]


def _resume_setup(resume: Path, overrides: list[str]) -> tuple[Config, Vocabulary, Path]:
    """Continue a run: its own config (plus overrides, e.g. more epochs), vocabulary and folder."""
    checkpoint = load_checkpoint(resume)
    hparams = checkpoint["hyper_parameters"]
    config = load_config(None, overrides, base=hparams["config"])
    run_dir = run_dir_of(resume) or resume.resolve().parent
    return config, Vocabulary(hparams["vocab"]), run_dir


def train(config: Config | None, *, resume: Path | None = None, overrides: list[str] | None = None,
          evaluate_after: bool = True) -> TrainResult:
    if resume is not None:
        config, vocab, run_dir = _resume_setup(resume, overrides or [])
    else:
        vocab, run_dir = None, new_run_dir(Path(config.output_dir), config.name)
    L.seed_everything(config.trainer.seed, workers=True, verbose=False)
    data = prepare(config)
    vocab = vocab or build_vocab(data, config.data.min_count)
    atomic.write_text(run_dir / "config.yaml", to_yaml(config))

    precision = resolve_precision(config)
    module = CaptionModule(to_dict(config), vocab.to_list())
    train_set, val_set = _datasets(config, data, module, vocab, bf16=precision == "bf16-mixed")
    datamodule = CaptionDataModule(train_set, val_set, batch_size=config.data.batch_size,
                                   num_workers=config.data.num_workers)
    t = config.trainer
    checkpoints = ModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename="best", monitor=t.monitor, mode="max",
        save_top_k=1, save_last="link",  # last.ckpt links to best.ckpt when they coincide
        enable_version_counter=False, auto_insert_metric_name=False,
    )
    trainer = L.Trainer(
        default_root_dir=run_dir, max_epochs=t.max_epochs, accelerator=t.accelerator,
        devices=_devices(t.devices), num_nodes=t.num_nodes, strategy=t.strategy,
        precision=precision,  # gradients are clipped in CaptionModule.configure_gradient_clipping
        callbacks=[checkpoints, EarlyStopping(monitor=t.monitor, mode="max", patience=t.patience),
                   TQDMProgressBar(refresh_rate=10)],
        logger=CSVLogger(run_dir, name="logs", version=""),
        limit_train_batches=t.limit_train_batches, limit_val_batches=t.limit_val_batches,
        log_every_n_steps=t.log_every_n_steps, enable_model_summary=False,
    )
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


def _devices(devices: str) -> str | int:
    return int(devices) if devices.isdigit() else devices

