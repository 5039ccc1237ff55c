"""Typed configuration: dataclass defaults (= the built-in shapes run), YAML files, dotted overrides.

OmegaConf merges the three and rejects unknown keys and ill-typed values, so a typo in a config
file or on the command line is an error naming the key, not a silently ignored setting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from captioner.errors import CaptionerError


@dataclass
class ShapesConfig:
    """Size of the built-in synthetic dataset (generated on first use)."""

    num_train: int = 3000
    num_val: int = 250
    num_test: int = 250
    size: int = 128
    seed: int = 0


@dataclass
class DataConfig:
    # "shapes" generates the built-in set; anything else reads `root` as a COCO-style dataset.
    dataset: str = "shapes"
    root: str | None = None
    # Karpathy-format split file (relative to root): which image is train/restval/val/test.
    karpathy_json: str = "dataset_shapes.json"
    # COCO caption/instance annotation files (relative to root), read with pycocotools.
    # Without caption files the captions come from the Karpathy file's sentences.
    captions_json: list[str] = field(default_factory=list)
    instances_json: list[str] = field(default_factory=list)
    train_splits: list[str] = field(default_factory=lambda: ["train", "restval"])
    min_count: int = 5
    # Words per caption (longer ones are cut): the shapes captions run to 17 words; COCO uses 16.
    max_length: int = 20
    captions_per_image: int = 5
    batch_size: int = 32
    num_workers: int = 0
    shapes: ShapesConfig = field(default_factory=ShapesConfig)


@dataclass
class EncoderConfig:
    arch: str = "vgg11_bn"
    # "imagenet" (torchvision's weights API), "none" (random init) or a path to a .pth file.
    weights: str = "none"
    # "frozen": fc7 features extracted once and cached; "finetune": the CNN trains too.
    mode: str = "finetune"
    image_size: int = 64
    resize_size: int = 64
    # Adam moves every weight by ~lr per step, so a layer's output moves by ~lr x fan-in: the
    # batch-normed conv layers take a larger rate than fc6 (fan-in 25,088) and fc7, which have
    # no normalisation and blow up at rates that suit the convs. fc_lr=0 keeps fc6/fc7 fixed.
    lr: float = 1e-3
    fc_lr: float = 0.0
    weight_decay: float = 0.0
    # Stop fine-tuning the CNN after this many epochs (neuraltalk2's finetune window); -1 = never.
    # Its learning rates then finish their one-cycle inside the window, and each image's fc7 is
    # computed once more and remembered: later epochs train the decoder alone, ~3x faster. On
    # shapes (fresh-scene pair-F1, 2000 scenes, decoder rate held): 5 CNN + 11 decoder epochs
    # 0.83 in 518 s, 6 + 9 0.87 in 543 s (benchmarks/default_train.py); past ~4 minutes of
    # decoder epochs the CNN is the limit (from the 5-epoch CNN: 0.84 after 2 minutes, 0.87 after
    # 4 and after 6). 6 + 9 with decoder_cooldown: 0.89, 561 s in a fresh virtualenv.
    freeze_after_epoch: int = 6


@dataclass
class DecoderConfig:
    cell: str = "lstm"
    embed_dim: int = 256
    hidden_dim: int = 512
    num_layers: int = 1
    dropout: float = 0.3


@dataclass
class OptimConfig:
    lr: float = 2e-3
    weight_decay: float = 0.0
    # Clip the global gradient norm: gates fix vanishing gradients, not exploding ones.
    grad_clip: float = 5.0
    # Weight of an auxiliary visual-concept loss on fc7 while fine-tuning (0 = off; see
    # captioner/concepts.py). It gives a CNN trained from scratch a direct signal; with ImageNet
    # weights it is not needed. Concepts: words (stemmed) that, on the images whose captions use
    # them, at least `concept_agreement` of the captions use, and ordered pairs of those words at
    # most `concept_window` positions apart ("red circl"; 0 = words only), by the same rule.
    # Default run's fresh-scene pair-F1 by weight (words only): 1 -> 0.57, 3 -> 0.66, 10 -> 0.63
    # (benchmarks/default_train.py); at weight 3 with window 2: 0.68, and its fc7 holds the pairs
    # (linear probe 0.85 -> 0.93, benchmarks/pair_probe.py).
    concept_weight: float = 3.0
    concept_agreement: float = 0.9
    concept_window: int = 2
    # Learning rate over the run, per step: "constant", or "onecycle" (Smith & Topin 2018): rise
    # from lr/25 to each group's lr over the first `warmup` fraction of the steps, then anneal to
    # ~0 along a cosine (the decoder: see anneal_decoder). Warm-up allows a higher peak rate;
    # annealing settles the weights.
    # Measured with benchmarks/encoder_probe.py (450 steps, VGG11-BN from scratch): constant
    # 3e-4 reached pair-F1 0.68, onecycle at 1e-3 0.93.
    schedule: str = "onecycle"
    warmup: float = 0.3
    # Whether the decoder's rate anneals after its warm-up (onecycle) or holds its peak. With the
    # CNN frozen after a few epochs the decoder trains alone, on a budget, and annealing stalled it
    # (14 epochs: val loss flat over the last 4, pair-F1 0.80 annealed, 0.82 held; 18 epochs,
    # frozen after 5: 0.83 annealed, 0.84 held). The CNN's groups always anneal, in their window.
    anneal_decoder: bool = False
    # With the decoder's rate held: over this last fraction of the run's steps it decays linearly
    # to ~0 (warmup-stable-decay), so the run ends on settled weights. On shapes the held rate
    # left the validation loss flat and noisy over the last epochs while pair-F1 still rose, so
    # best.ckpt (lowest validation loss) was an earlier, worse state than last.ckpt (pair-F1
    # 0.867 against 0.874, and 0.828 against 0.853 with another seed). The decay itself cost no
    # pair-F1 (from one CNN state, two seeds: 0.849 and 0.841 with it, 0.851 and 0.835 without).
    decoder_cooldown: float = 0.2


@dataclass
class TrainerConfig:
    max_epochs: int = 15
    accelerator: str = "auto"
    devices: str = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    # "auto": bf16 autocast where the hardware does it fast (AMX CPUs, Ampere+ GPUs), else fp32.
    precision: str = "auto"
    # The best checkpoint: val/bleu4 or val/cider (greedy captions of the val split, higher is
    # better) or val/loss (teacher-forced cross-entropy, lower is better). On shapes, BLEU-4 of
    # 250 greedy captions swings with phrasing from epoch to epoch (0.65-0.69 while pair-F1 rose
    # 0.85 -> 0.91) and picked the 11th of 18 epochs (pair-F1 0.85); the loss moved smoothly and
    # was lowest at the 15th (0.90). With the decoder's rate held it is noisier too.
    monitor: str = "val/loss"
    # Stop after this many validations without a better `monitor`; 0 = run every epoch. A run
    # on a schedule should not stop early: the CNN anneals and freezes on it, the decoder trains on.
    patience: int = 0
    seed: int = 0
    limit_train_batches: float = 1.0
    limit_val_batches: float = 1.0
    log_every_n_steps: int = 10


@dataclass
class EvalConfig:
    split: str = "test"
    beam_size: int = 3
    max_length: int = 20
    length_penalty: float = 0.0
    batch_size: int = 64
    worst: int = 24
    meteor: bool = True
    # Resamples of the images behind each metric's 95% bootstrap interval (0 = no intervals).
    # At 1000, the fewest allowed, each 2.5% tail rests on 25 resamples. Cost: see
    # benchmarks/bootstrap_speed.py.
    bootstrap: int = 1000


@dataclass
class Config:
    name: str = "shapes"
    output_dir: str = "runs"
    cache_dir: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def _one_line(err: OmegaConfBaseException) -> str:
    return str(err).strip().splitlines()[0]


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> Config:
    """Defaults (or `base`), then the YAML file, then `key.sub=value` overrides; unknown keys are errors."""
    merged = OmegaConf.structured(Config)
    try:
        if base is not None:
            merged = _merge(merged, OmegaConf.create(base), "checkpoint config")
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise CaptionerError(f"config file not found: {path}")
            try:
                loaded = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as err:
                raise CaptionerError(f"{path}: not valid YAML ({_yaml_line(err)})") from err
            if not isinstance(loaded, dict):
                raise CaptionerError(f"{path}: expected a mapping of settings at the top level")
            merged = _merge(merged, OmegaConf.create(loaded), str(path))
        for item in overrides or []:
            if "=" not in item:
                raise CaptionerError(f"override {item!r} is not of the form key=value")
            merged = _merge(merged, OmegaConf.from_dotlist([item]), f"override {item!r}")
        config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise CaptionerError(f"bad configuration: {_one_line(err)}") from err
    return validate(config)  # type: ignore[arg-type]


def _yaml_line(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    return f"line {mark.line + 1}" if mark is not None else "parse error"


def _merge(base: Any, update: Any, source: str) -> Any:
    try:
        return OmegaConf.merge(base, update)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or ""
        raise CaptionerError(f"{source}: bad config key {key!r}: {_one_line(err)}") from err


def to_dict(config: Config) -> dict[str, Any]:
    """Plain dict (safe for YAML, JSON and weights-only checkpoints)."""
    return OmegaConf.to_container(OmegaConf.structured(config), resolve=True)  # type: ignore[return-value]


def from_dict(data: dict[str, Any]) -> Config:
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), data))  # type: ignore[return-value]


def to_yaml(config: Config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


_CHOICES = {
    "encoder.mode": ("frozen", "finetune"),
    "decoder.cell": ("lstm", "gru", "rnn"),
    "optim.schedule": ("constant", "onecycle"),
    "trainer.monitor": ("val/bleu4", "val/cider", "val/loss"),
    "trainer.precision": ("auto", "32", "bf16-mixed", "16-mixed"),
}


def monitor_mode(monitor: str) -> str:
    """"min" for the validation loss, "max" for the caption metrics."""
    return "min" if monitor == "val/loss" else "max"


def validate(config: Config) -> Config:
    """Reject values that parse but mean nothing, naming the setting."""
    data = to_dict(config)
    for key, allowed in _CHOICES.items():
        section, name = key.split(".")
        value = data[section][name]
        if value not in allowed:
            raise CaptionerError(f"bad configuration: {key}={value!r}; choose one of {list(allowed)}")
    if not config.encoder.arch.startswith("vgg"):
        raise CaptionerError(f"bad configuration: encoder.arch={config.encoder.arch!r} is not a VGG")
    for key in ("data.batch_size", "data.max_length", "data.captions_per_image", "eval.beam_size"):
        section, name = key.split(".")
        if data[section][name] < 1:
            raise CaptionerError(f"bad configuration: {key} must be at least 1")
    if not 0.0 <= config.optim.concept_agreement <= 1.0:
        raise CaptionerError("bad configuration: optim.concept_agreement must be in [0, 1]")
    if config.optim.concept_window < 0:
        raise CaptionerError("bad configuration: optim.concept_window must be 0 or more")
    if config.eval.bootstrap != 0 and config.eval.bootstrap < 1000:
        raise CaptionerError("bad configuration: eval.bootstrap must be 0 (off) or at least 1000")
    if config.trainer.patience < 0:
        raise CaptionerError("bad configuration: trainer.patience must be 0 (off) or more")
    if not 0.0 <= config.optim.warmup < 1.0:
        raise CaptionerError("bad configuration: optim.warmup must be in [0, 1)")
    if not 0.0 <= config.optim.decoder_cooldown < 1.0:
        raise CaptionerError("bad configuration: optim.decoder_cooldown must be in [0, 1)")
    return config
