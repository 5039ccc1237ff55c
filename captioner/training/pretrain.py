"""`captioner pretrain`: a torchvision VGG trained as a multi-label classifier on the dataset's objects.

Show and tell starts from a CNN trained as an ImageNet classifier, removes its classifier and
feeds fc7 to the decoder. Where ImageNet weights cannot be had (an offline machine, CI) or do not
fit the images (a domain far from photographs), this trains the same kind of classifier on the
dataset's own object annotations, the COCO instances files: the 80 categories on COCO, the
colour-shape pairs on the built-in shapes set. What it saves is a torchvision VGG state dict
without its classifier (fc8), which `encoder.weights=PATH` loads: everything after it is exactly
the ImageNet recipe. `encoder.weights=pretrain` does this on first use and keeps the weights in
the cache, keyed by everything that made them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, Dataset

from captioner.config import Config, from_dict, load_config, to_dict, to_yaml
from captioner.data.coco import ImageRecord
from captioner.data.images import open_rgb
from captioner.data.instances import instance_labels
from captioner.data.prepare import PreparedData, cache_dir, prepare
from captioner.data.shapes import GENERATOR_VERSION, ShapesSpec
from captioner.errors import CaptionerError, Interrupted
from captioner.features.cache import records_fingerprint
from captioner.model.checkpoint import (
    hyper_parameters,
    recorded_version,
    refuse_interpolations,
    refuse_weights_only,
)
from captioner.model.encoder import FEATURE_DIM, build_encoder, build_preprocess, export_weights
from captioner.model.shipped_encoder import SHIPPED, fc_fingerprint, unpack
from captioner.training.adapters import LAST, fit
from captioner.training.schedule import one_cycle
from captioner.training.trainer import build_trainer, stop_unless_finite
from captioner.util.atomic import TEMP_SUFFIX, write_json, write_text
from captioner.util.console import say
from captioner.util.hardware import resolve_precision
from captioner.util.locks import flock
from captioner.util.runs import claim_run_dir, kept_on_failure, run_dir_of
from captioner.util.schema import check_version
from captioner.version import __version__

# Bump when a change of this module changes the weights a given config produces.
PRETRAIN_VERSION = 3
WEIGHTS_FILE = "encoder.pth"
MONITOR = "val/f1"
FIXED = "encoder.fc."  # fc6 and fc7 in the classifier's state dict
# A label becomes a target when this many training images carry it (or 1% of them, on a set too
# small for that); at most this many targets (1,000 caption words is Fang et al.'s vocabulary).
MIN_IMAGES, MAX_TARGETS = 5, 1000
KEEP_BYTES = 1 << 30
# Words too common and too empty to be visual concepts (nltk's stop-word list needs a download).
STOPWORDS = frozenset("""a an the of on in at to with and or but is are was were be been being it its
this that these those there here he she they them his her their him we you i my our your some any
as by for from into onto over under up down out off near next while who which what where when
has have having do does did not no very""".split())


@dataclass(frozen=True)
class Targets:
    """The classifier's outputs: object labels, and with counts "<label> x2+" columns."""

    names: list[str]

    @classmethod
    def build(cls, labels: Sequence[list[str]], counts: bool) -> Targets:
        """Every label at least MIN_IMAGES training images carry (1% of them on a small set), the
        MAX_TARGETS most common."""
        images = Counter(label for image in labels for label in set(image))
        least = min(MIN_IMAGES, max(1, len(labels) // 100))
        common = [label for label, n in images.most_common(MAX_TARGETS) if n >= least]
        names = sorted(common)
        if counts:
            names += sorted({f"{label} x2+" for image in labels
                             for label, n in Counter(image).items() if n > 1 and label in common})
        return cls(names)

    def encode(self, labels: list[str]) -> Tensor:
        column = {name: i for i, name in enumerate(self.names)}
        target = torch.zeros(len(self.names))
        for label, n in Counter(labels).items():
            for name in (label, f"{label} x2+") if n > 1 else (label,):
                if name in column:
                    target[column[name]] = 1.0
        return target


class LabelledImages(Dataset):
    """(preprocessed image, target) pairs. With `keep`, each image is decoded once and kept for
    the later epochs (a small dataset in the main process: shapes' 3,000 take 150 MB)."""

    def __init__(self, records: Sequence[ImageRecord], targets: Sequence[Tensor], preprocess: Any,
                 keep: bool = False) -> None:
        self.records, self.targets, self.preprocess = list(records), list(targets), preprocess
        self._kept: dict[int, Tensor | None] | None = {} if keep else None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor] | None:
        if self._kept is not None and i in self._kept:
            image = self._kept[i]
        else:
            image = self._load(i)
            if self._kept is not None:
                self._kept[i] = image
        return None if image is None else (image, self.targets[i])

    def _load(self, i: int) -> Tensor | None:
        try:
            return self.preprocess(open_rgb(self.records[i].path))
        except CaptionerError as err:
            say(f"skipping unreadable image: {err}")
            return None


def _collate(items: list[tuple[Tensor, Tensor] | None]) -> tuple[Tensor, Tensor] | None:
    items = [item for item in items if item is not None]
    if not items:
        return None
    return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])


PRETRAIN_SCHEMA = 1  # of PretrainMeta's record


@dataclass(frozen=True)
class PretrainMeta:
    """What a pretraining checkpoint records of itself, in Lightning's `hyper_parameters`: the
    config, the classifier's targets (object labels or words), the version that wrote it and the
    schema version (a checkpoint without one is read as version 1)."""

    config: dict[str, Any]
    targets: list[str]
    captioner_version: str | None = __version__

    def to_json(self) -> dict[str, Any]:
        return {"config": self.config, "targets": self.targets,
                "captioner_version": self.captioner_version, "schema_version": PRETRAIN_SCHEMA}

    @classmethod
    def from_json(cls, checkpoint: Any, where: str | Path) -> PretrainMeta:
        hparams = hyper_parameters(checkpoint, where, "targets",
                                   "not a pretraining checkpoint (no config and targets inside)")
        check_version(hparams, where, "pretraining checkpoint", PRETRAIN_SCHEMA, "pretrain it again")
        return cls(hparams["config"], list(hparams["targets"]), recorded_version(hparams))


class ClassifierModule(L.LightningModule):
    """A VGG whose classifier (fc8) is a new linear layer over fc7, one output per target."""

    def __init__(self, config: dict[str, Any], targets: list[str], encoder_weights: str = "none",
                 captioner_version: str = __version__) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["encoder_weights"])
        self.config: Config = from_dict(config)
        c = self.config.encoder
        self.encoder = build_encoder(c.arch, encoder_weights, seed=self.config.trainer.seed)
        self.encoder.to(memory_format=torch.channels_last)
        self.head = nn.Linear(FEATURE_DIM, len(targets))
        # Fixed fc6/fc7 take no gradient (the encoder then folds fc6 for small images) and no dropout.
        self.encoder.fc.requires_grad_(self.config.pretrain.train_fc)
        self._counts = torch.zeros(3)  # true positives, predicted, actual positives
        self._fingerprint: Tensor | None = None  # of the fixed fc6/fc7, see _fc_fingerprint
        self._exact = [0, 0]
        # The training images' order: its state travels in the checkpoints, so a resumed run
        # draws the epochs after the checkpoint in the order an uninterrupted one does.
        self.data_order = torch.Generator().manual_seed(self.config.trainer.seed)

    def start_at_priors(self, targets: Tensor) -> None:
        """Bias each output at its training frequency (Lin et al. 2017's prior initialisation): the
        classifier starts where it would spend its first epoch getting to, predicting every
        target as often as it occurs, and the gradient goes to telling images apart at once."""
        share = targets.float().mean(dim=0).clamp(1e-3, 1 - 1e-3)
        with torch.no_grad():
            self.head.bias.copy_(torch.log(share / (1 - share)))

    def on_train_epoch_start(self) -> None:
        self.encoder.fc.train(self.config.pretrain.train_fc)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        hparams = self.hparams
        meta = PretrainMeta(hparams["config"], list(hparams["targets"]), hparams["captioner_version"])
        checkpoint["hyper_parameters"] = meta.to_json()
        checkpoint["data_order"] = self.data_order.get_state()
        # Fixed fc6/fc7 (103M + 17M weights) are rebuilt exactly from the seed or the starting file
        # on resume: checkpoints keep a fingerprint of them instead, 0.5 GB less written an epoch.
        if not self.config.pretrain.train_fc:
            state = checkpoint["state_dict"]
            for name in [k for k in state if k.startswith(FIXED)]:
                del state[name]
            checkpoint["fixed_fc"] = self._fc_fingerprint()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "data_order" in checkpoint:
            self.data_order.set_state(checkpoint["data_order"])
        if "fixed_fc" not in checkpoint:
            return
        if not torch.allclose(checkpoint["fixed_fc"], self._fc_fingerprint(), rtol=1e-9, atol=0):
            raise CaptionerError("pretraining: this resume would rebuild fc6/fc7 differently from the "
                                 "interrupted run (another encoder.weights file or seed); start afresh")
        checkpoint["state_dict"].update({FIXED + k: v for k, v in self.encoder.fc.state_dict().items()})

    def _fc_fingerprint(self) -> Tensor:
        """Of the fixed fc6/fc7, computed once: they never change."""
        if self._fingerprint is None:
            self._fingerprint = fc_fingerprint(self.encoder.fc)
        return self._fingerprint

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.encoder(images.contiguous(memory_format=torch.channels_last)).float())

    def training_step(self, batch: tuple[Tensor, Tensor] | None, batch_idx: int) -> Tensor | None:
        if batch is None:
            return None
        images, targets = batch
        loss = F.binary_cross_entropy_with_logits(self(images), targets)
        stop_unless_finite(self, loss, "pretraining", "lower pretrain.lr")
        self.log("train/loss", loss, prog_bar=True, batch_size=len(images))
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor] | None, batch_idx: int) -> None:
        if batch is None:
            return
        images, targets = batch
        logits = self(images)
        self.log("val/loss", F.binary_cross_entropy_with_logits(logits, targets), batch_size=len(images),
                 sync_dist=True)
        predicted, actual = logits > 0, targets > 0
        self._counts += torch.tensor([(predicted & actual).sum(), predicted.sum(), actual.sum()]).float()
        self._exact[0] += int((predicted == actual).all(dim=1).sum())
        self._exact[1] += len(images)

    def on_validation_epoch_end(self) -> None:
        counts = self.trainer.strategy.reduce(self._counts.to(self.device), reduce_op="sum")
        hits, predicted, actual = counts.tolist()
        self.log("val/f1", 2 * hits / max(predicted + actual, 1.0), prog_bar=True)
        self.log("val/exact", self._exact[0] / max(self._exact[1], 1))
        self._counts.zero_()
        self._exact = [0, 0]

    def configure_optimizers(self) -> Any:
        p = self.config.pretrain
        params = [*self.encoder.features.parameters(), *self.head.parameters()]
        if p.train_fc:
            params += self.encoder.fc.parameters()
        optimizer = torch.optim.Adam(params, lr=p.lr, fused=self.device.type in ("cpu", "cuda"))
        schedule = LambdaLR(optimizer, one_cycle(int(self.trainer.estimated_stepping_batches), p.warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


@dataclass
class Pretrained:
    weights: Path  # the encoder file encoder.weights loads
    f1: float  # validation micro-F1 of the classifier when it was saved
    exact: float  # share of validation images with every target right


def image_labels(data: PreparedData, targets: str) -> dict[int, list[str]]:
    """What each image is labelled with: its objects from the instances files ("objects",
    "objects+counts", or "auto" when there are instances files), else ("words", or "auto"
    without them) the content words its captions use, as in Fang et al. 2015's visual concepts."""
    if targets.startswith("objects") or (targets == "auto" and data.instances):
        if not data.instances:
            raise CaptionerError(f"pretrain.targets={targets} needs object labels: set "
                                 "data.instances_json (COCO instances files), or use pretrain.targets=words")
        return instance_labels(data.instances)[1]
    return {r.image_id: sorted({w for tokens in data.tokens(r) for w in tokens if w not in STOPWORDS})
            for r in data.records}


def labelled(data: PreparedData, split: str, labels: dict[int, list[str]], targets: Targets | None,
             counts: bool) -> tuple[list[ImageRecord], list[Tensor], Targets]:
    """A split's labelled images, their target vectors, and the targets."""
    records = [r for r in data.split(split) if r.image_id in labels]
    if not records:
        raise CaptionerError(f"pretraining: no {split} image of {data.root} has labels")
    targets = targets or Targets.build([labels[r.image_id] for r in records], counts)
    if not targets.names:
        raise CaptionerError(f"pretraining: the {split} images of {data.root} carry no labels to "
                             "classify; set encoder.weights (imagenet, none or a .pth file) instead")
    return records, [targets.encode(labels[r.image_id]) for r in records], targets


def run_pretraining(config: Config, data: PreparedData, folder: Path, *,
                    resume: Path | None = None) -> Pretrained:
    """Train the classifier into `folder` (checkpoints/, logs/) and save folder/encoder.pth."""
    p, c = config.pretrain, config.encoder
    labels, counts = image_labels(data, p.targets), p.targets == "objects+counts"
    train_records, train_targets, targets = labelled(data, "train", labels, None, counts)
    val_records, val_targets, _ = labelled(data, "val", labels, targets, counts)
    start = "none" if c.weights == "pretrain" else c.weights
    L.seed_everything(config.trainer.seed, workers=True, verbose=False)
    module = ClassifierModule(to_dict(config), targets.names, encoder_weights=start)
    module.start_at_priors(torch.stack(train_targets))
    preprocess = build_preprocess(c.arch, c.image_size, c.resize_size)
    loader = partial(DataLoader, batch_size=p.batch_size, num_workers=config.data.num_workers,
                     collate_fn=_collate)
    # Decoded images are kept between epochs where they fit in KEEP_BYTES and no workers load them.
    keep = config.data.num_workers == 0 and len(train_records) * 3 * c.image_size ** 2 * 4 <= KEEP_BYTES
    train = loader(LabelledImages(train_records, train_targets, preprocess, keep), shuffle=True,
                   generator=module.data_order)
    val = loader(LabelledImages(val_records, val_targets, preprocess))
    say(f"pretraining {c.arch} at {c.image_size}px ({resolve_precision(config)}) as a classifier of "
        f"{len(targets.names)} targets on {len(train_records)} images into {folder}")
    # Memory-mapped: only the step is read, not the weights and Adam's moments.
    resume_step = (torch.load(resume, map_location="cpu", weights_only=True, mmap=True)["global_step"]
                   if resume else None)
    trainer = build_trainer(config, folder, [], monitor=MONITOR, what="pretraining",
                            resume_step=resume_step, max_epochs=p.epochs, devices=1, num_nodes=1,
                            strategy="auto")
    fit(trainer, module, train, val, resume=resume)
    f1, exact = (float(trainer.callback_metrics[k]) for k in (MONITOR, "val/exact"))
    meta = {"arch": c.arch, "image_size": c.image_size, "resize_size": c.resize_size,
            "targets": targets.names, "val_f1": f1, "val_exact": exact, "pretrain": asdict(p),
            "dataset": str(data.root), "captioner_version": __version__}
    export_weights(module.encoder, folder / WEIGHTS_FILE, meta)
    return Pretrained(folder / WEIGHTS_FILE, f1, exact)


def pretrain_key(config: Config, data: PreparedData) -> dict[str, Any]:
    """Everything the pretrained weights depend on."""
    instances = [(str(path), path.stat().st_size, path.stat().st_mtime_ns) for path in data.instances]
    return {**_recipe(config), "precision": resolve_precision(config), "dataset": str(data.root),
            "instances": instances, "images": records_fingerprint(data.split("train") + data.split("val"))}


def shapes_recipe(config: Config) -> dict[str, Any] | None:
    """What pretraining on the built-in shapes set depends on besides the machine (the set is
    generated from its settings alone): the key of the encoder the package ships. None for
    other data or starting weights."""
    d = config.data
    if d.dataset != "shapes" or d.root or config.encoder.weights != "pretrain":
        return None
    shapes = {"generator_version": GENERATOR_VERSION, **ShapesSpec(**asdict(d.shapes)).recorded()}
    return {**_recipe(config), "data": {"shapes": shapes, "karpathy_json": d.karpathy_json,
                                        "captions_json": d.captions_json, "instances_json": d.instances_json,
                                        "train_splits": d.train_splits}}


def _recipe(config: Config) -> dict[str, Any]:
    c, t = config.encoder, config.trainer
    settings = {k: v for k, v in asdict(config.pretrain).items() if k != "shipped"}  # not the weights'
    return {"version": PRETRAIN_VERSION, "arch": c.arch, "image_size": c.image_size,
            "resize_size": c.resize_size, "pretrain": settings, "seed": t.seed,
            "limit_train_batches": t.limit_train_batches}


def cached_encoder(config: Config, data: PreparedData) -> Path:
    """The cache's pretrained encoder for this data and config, pretrained first if missing.

    An interrupted pretraining resumes from its last checkpoint; processes that need the same
    weights at once (DDP ranks, two runs) wait for the one that trains them.
    """
    key = pretrain_key(config, data)
    digest = hashlib.blake2b(json.dumps(key, sort_keys=True).encode(), digest_size=8).hexdigest()
    c = config.encoder
    folder = cache_dir(config) / "encoders" / f"{c.arch}-{c.image_size}px-{digest}"
    folder.mkdir(parents=True, exist_ok=True)
    with flock(folder / "pretrain.lock", wait=True), _interrupt_says_what_is_kept(folder):
        weights = folder / WEIGHTS_FILE
        if not weights.is_file():
            last = folder / "checkpoints" / LAST
            if last.is_file():
                say(f"resuming the interrupted pretraining in {folder}")
            write_json(folder / "key.json", key)
            if last.is_file() or not _from_package(config, weights):
                run_pretraining(config, data, folder, resume=last if last.is_file() else None)
            _drop_checkpoints(folder / "checkpoints")
        else:
            say(f"using the pretrained encoder {weights}")
    return weights


def _from_package(config: Config, weights: Path) -> bool:
    """Whether the encoder the package ships for these settings was written to `weights`."""
    recipe = shapes_recipe(config) if config.pretrain.shipped else None
    if recipe is None or not unpack(recipe, weights, {"source": "shipped with captioner"}, SHIPPED):
        return False
    say(f"using the shapes encoder shipped with captioner ({SHIPPED.name}, what this pretraining "
        "makes; pretrain.shipped=false pretrains it here)")
    return True


@contextlib.contextmanager
def _interrupt_says_what_is_kept(folder: Path) -> Iterator[None]:
    """Ctrl-C during the cached pretraining, as Interrupted saying what the next run starts from."""
    try:
        yield
    except KeyboardInterrupt:
        weights, last = folder / WEIGHTS_FILE, folder / "checkpoints" / LAST
        if weights.is_file():
            kept = f"the pretrained encoder {weights} is kept: run the same command again to use it"
        elif last.is_file():
            epochs = torch.load(last, map_location="cpu", weights_only=True, mmap=True)["epoch"] + 1
            kept = (f"its checkpoint after epoch {epochs} is kept in {last.parent}: run the same "
                    "command again to resume the pretraining from there")
        else:
            kept = "nothing of it was kept: run the same command again to start it afresh"
        raise Interrupted(f"interrupted while pretraining the encoder; {kept}") from None


def _drop_checkpoints(folder: Path) -> None:
    """The cache needs encoder.pth only: the classifier's checkpoints (the VGG again, with Adam's
    moments) served an interrupted pretraining, which is now complete."""
    if folder.is_dir() and not folder.is_symlink():
        for path in folder.iterdir():
            if path.suffix == ".ckpt" or path.name.endswith(TEMP_SUFFIX):
                path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # not empty: something else lives there; keep it
            folder.rmdir()


def pretrain(config_path: Path | None, overrides: list[str], *, resume: Path | None = None) -> Pretrained:
    """`captioner pretrain`: into a new run folder runs/<name>-pretrain, or continue `resume`."""
    if resume is not None:
        config, run_dir, claimed = _resumed(resume, overrides), run_dir_of(resume), False
        if run_dir is None:
            raise CaptionerError(f"{resume}: not inside a pretraining run folder (<run>/checkpoints/)")
    else:
        config = load_config(config_path, overrides)
        run_dir, claimed = claim_run_dir(Path(config.output_dir), f"{config.name}-pretrain"), True
    # Not marked the latest run: that is where captioning looks for a captioner's checkpoint.
    with kept_on_failure(run_dir, claimed, "captioner pretrain", what="pretraining", latest=False):
        data = prepare(config)
        write_text(run_dir / "config.yaml", to_yaml(config))
        return run_pretraining(config, data, run_dir, resume=resume)


def _resumed(path: Path, overrides: list[str]) -> Config:
    if not path.is_file():
        raise CaptionerError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        raise CaptionerError(f"{path}: not a pretraining checkpoint ({type(err).__name__})") from err
    config = PretrainMeta.from_json(checkpoint, path).config
    refuse_weights_only(checkpoint, path)
    refuse_interpolations(config, path)
    return load_config(None, overrides, base=config)
