"""Typed configuration: dataclass defaults (= the built-in shapes run), YAML files, dotted overrides.

OmegaConf merges the three and rejects unknown keys and ill-typed values, so a typo in a config
file or on the command line is an error naming the key, not a silently ignored setting. Each
setting carries its one-sentence meaning, which `captioner config show` prints beside its value.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from captioner.errors import CaptionerError, one_line


def setting(default: Any = None, help: str = "", *, factory: Callable[[], Any] | None = None,
            choices: tuple[str, ...] = (), low: float | None = None, high: float | None = None) -> Any:
    """A config field with its one-sentence meaning and what it accepts: one of `choices`, or a
    number from `low` (to `high`). Validation, `captioner config show` and shell completion read
    them from here."""
    metadata = {"help": help, "choices": choices, "low": low, "high": high}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class ShapesConfig:
    num_train: int = setting(3000, "Training images of the built-in synthetic dataset.", low=1)
    num_val: int = setting(250, "Validation images.", low=1)
    num_test: int = setting(250, "Test images.", low=1)
    size: int = setting(128, "Side of each square image, in pixels.", low=32)
    seed: int = setting(0, "Seed of the generator: the same seed and sizes give byte-identical files.")
    max_objects: int = setting(3, "Most objects per image (1-5); above 3, longer captions that name "
                                  "them all test the decoder's memory.", low=1, high=5)


@dataclass
class DataConfig:
    dataset: str = setting("shapes", "\"shapes\" generates the built-in set; any other name reads data.root.")
    root: str | None = setting(None, "Folder of a COCO-style dataset (split file, images, annotations).")
    karpathy_json: str = setting("dataset_shapes.json", "Karpathy-format split file, relative to root.")
    captions_json: list[str] = setting(
        factory=list, help="COCO caption files (relative to root); none: the split file's sentences.")
    instances_json: list[str] = setting(
        factory=list, help="COCO instances files (relative to root): labels for pretraining and CHAIR.")
    train_splits: list[str] = setting(
        factory=lambda: ["train", "restval"], help="Splits of the split file that training uses.")
    min_count: int = setting(5, "Words seen fewer times in the training captions become <unk>.", low=1)
    max_length: int = setting(20, "Words per caption; longer captions are cut.", low=1)
    captions_per_image: int = setting(5, "Captions per image and step while the CNN trains (finetune).",
                                      low=1)
    batch_size: int = setting(32, "Images per step; on cached features, captions per step / 5.", low=1)
    num_workers: int = setting(0, "DataLoader worker processes (0: load in the main process).", low=0)
    shapes: ShapesConfig = field(default_factory=ShapesConfig)


@dataclass
class EncoderConfig:
    arch: str = setting("vgg11_bn_x0_5", "A torchvision VGG (vgg11, vgg11_bn, ... vgg19_bn), or one "
                                         "narrowed: _x0_5 halves every conv layer (no ImageNet weights).")
    weights: str = setting(
        "pretrain", "\"pretrain\" (a classifier of the dataset's objects, trained once and cached), "
                    "\"imagenet\", \"none\" (random) or a .pth file.")
    mode: str = setting("frozen", "\"frozen\": fc7 cached once, only the decoder trains; \"finetune\": the "
                                  "CNN trains too.", choices=("frozen", "finetune"))
    # VGG at 1,024 px already takes ~1.5 GB of activations an image; more is a typo or an attack.
    image_size: int = setting(64, "Side of the centre crop fed to the CNN, in pixels.", low=32, high=1024)
    resize_size: int = setting(64, "Shorter side each image is resized to before the crop.",
                               low=32, high=1024)
    lr: float = setting(1e-5, "Learning rate of the CNN when it trains (encoder.mode=finetune).", low=0)
    weight_decay: float = setting(0.0, "L2 weight decay of the CNN when it trains.", low=0)


@dataclass
class PretrainConfig:
    targets: str = setting(
        "auto", "What the classifier learns: objects (the instances files' categories; on shapes, "
                "colour-shape pairs), objects+counts, words (its captions' content words), auto "
                "(objects where there are instances files, else words).",
        choices=("auto", "objects", "objects+counts", "words"))
    epochs: int = setting(5, "Passes over the training images.", low=1)
    lr: float = setting(1e-3, "Peak learning rate (Adam) of the one-cycle schedule.", low=0)
    warmup: float = setting(0.3, "Share of the steps warming up from lr/25 to lr; the rest anneals to ~0.",
                            low=0, high=0.99)
    batch_size: int = setting(32, "Images per step.", low=1)
    train_fc: bool = setting(False, "Whether fc6 and fc7 train too (fixed, they project the convolutions).")
    shipped: bool = setting(True, "On the built-in shapes set with these settings, take the encoder "
                                  "the package ships (this pretraining's result) instead of pretraining.")


@dataclass
class DecoderConfig:
    cell: str = setting("lstm", "Recurrent cell: lstm, gru or rnn (plain tanh).",
                        choices=("lstm", "gru", "rnn"))
    embed_dim: int = setting(256, "Size of the word embeddings.", low=1)
    hidden_dim: int = setting(256, "Size of the recurrent state, which fc7 initialises.", low=1)
    num_layers: int = setting(1, "Stacked recurrent layers.", low=1)
    dropout: float = setting(0.3, "Dropout on fc7, between layers and before the output layer.",
                             low=0, high=0.99)


@dataclass
class OptimConfig:
    lr: float = setting(2e-3, "Learning rate of the decoder (Adam).", low=0)
    weight_decay: float = setting(0.0, "L2 weight decay of the decoder.", low=0)
    grad_clip: float = setting(5.0, "Gradient-norm limit (0: off); gates fix vanishing, not exploding.",
                               low=0)
    cooldown: float = setting(0.5, "Share of the last steps over which the learning rates decay to ~0.",
                              low=0, high=1)


@dataclass
class TrainerConfig:
    max_epochs: int = setting(10, "Passes over the training captions.", low=1)
    accelerator: str = setting("auto", "auto, cpu or gpu.")
    devices: str = setting("auto", "Devices per node: auto or a number.")
    num_nodes: int = setting(1, "Machines taking part (Lightning DDP).", low=1)
    strategy: str = setting("auto", "Lightning strategy: auto, ddp, ...")
    precision: str = setting("auto", "auto (bf16 where it is fast), 32, bf16-mixed or 16-mixed.",
                             choices=("auto", "32", "bf16-mixed", "16-mixed"))
    monitor: str = setting("val/loss", "What picks best.ckpt: val/loss (lowest), val/bleu4, val/cider.",
                           choices=("val/bleu4", "val/cider", "val/loss"))
    patience: int = setting(0, "Stop after this many validations without a better monitor (0: never).", low=0)
    seed: int = setting(0, "Seed of initialisation, data order and dropout.")
    limit_train_batches: float = setting(1.0, "Share (or, above 1, number) of training batches per epoch.",
                                         low=0)
    limit_val_batches: float = setting(1.0, "Share (or, above 1, number) of validation batches per epoch.",
                                       low=0)
    log_every_n_steps: int = setting(10, "Log training figures every this many steps.", low=1)
    profile: bool = setting(False, "Write logs/fit-profile.txt: the seconds each part of training took.")


@dataclass
class EvalConfig:
    split: str = setting("test", "Split the final evaluation scores.")
    beam_size: int = setting(3, "Beam width of the evaluation's captions.", low=1)
    max_length: int = setting(20, "Most words a generated caption may have.", low=1)
    length_penalty: float = setting(0.0, "GNMT length penalty alpha for beam search (0: none).", low=0)
    batch_size: int = setting(64, "Images per batch when extracting features and captioning.", low=1)
    worst: int = setting(24, "Images in the report's gallery of failures.", low=0)
    meteor: bool = setting(True, "Whether to compute METEOR (needs Java).")
    bootstrap: int = setting(1000, "Resamples behind each metric's 95% interval (0: none; else 1000+).")


@dataclass
class ScstConfig:
    epochs: int = setting(0, "Self-critical epochs after cross-entropy (0: none); `captioner finetune` "
                             "runs them on a trained checkpoint.", low=0)
    lr: float = setting(5e-5, "Learning rate of the decoder (Adam) while it trains self-critically.", low=0)
    samples: int = setting(5, "Captions sampled per image and step.", low=1, high=20)
    baseline: str = setting("greedy", "What each sample's reward is compared with: greedy (the "
                                      "model's own greedy caption, Rennie et al.) or mean (the image's "
                                      "other samples').", choices=("greedy", "mean"))
    cider_weight: float = setting(1.0, "Weight of the caption's CIDEr-D (training references) in the reward.",
                                  low=0)
    bleu_weight: float = setting(0.0, "Weight of the caption's smoothed BLEU-4 in the reward.", low=0)
    object_weight: float = setting(
        0.0, "Weight of the caption's object F1 in the reward: the objects it names against those "
             "annotated (instances files), read as the report's CHAIR reads them.", low=0)
    stop_below: float = setting(0.9, "Stop when validation CIDEr-D falls below this share of its best "
                                     "so far, as a collapsed policy's does (0: never).", low=0, high=1)


@dataclass
class Config:
    name: str = setting("shapes", "Run name: the run folder is output_dir/name (name-2, -3... when taken).")
    output_dir: str = setting("runs", "Where run folders go.")
    cache_dir: str | None = setting(None, "Datasets, features and encoders (default: $CAPTIONER_CACHE, else "
                                          "~/.cache/captioner).")
    data: DataConfig = field(default_factory=DataConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    scst: ScstConfig = field(default_factory=ScstConfig)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> Config:
    """Defaults (or `base`), then the YAML file, then `key.sub=value` overrides; unknown keys are errors."""
    merged = OmegaConf.structured(Config)
    try:
        if base is not None:
            merged = _merge(merged, OmegaConf.create(base), "checkpoint config")
        if path is not None:
            merged = _merge(merged, OmegaConf.create(read_yaml(Path(path))), str(path))
        for item in overrides or []:
            if "=" not in item:
                raise CaptionerError(f"override {item!r} is not of the form key=value")
            merged = _merge(merged, OmegaConf.from_dotlist([item]), f"override {item!r}")
        config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise CaptionerError(f"bad configuration: {one_line(err)}") from err
    return validate(config)  # type: ignore[arg-type]


# A config is a few hundred settings: these bound what a hostile file can make YAML build (aliases
# share one object, but merging copies each use: nine levels of nine make 9**9 strings).
MAX_YAML_BYTES = 1 << 20
MAX_YAML_VALUES = 100_000


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping, read as UTF-8 whatever the locale, at most MAX_YAML_BYTES long and
    MAX_YAML_VALUES values with every alias expanded."""
    if not path.is_file():
        raise CaptionerError(f"config file not found: {path}")
    size = path.stat().st_size
    if size > MAX_YAML_BYTES:
        raise CaptionerError(f"{path}: {size / 1e6:.1f} MB; a config file is at most "
                             f"{MAX_YAML_BYTES / 1e6:.1f} MB")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        raise CaptionerError(f"{path}: not UTF-8 text (byte {err.start}); save it as UTF-8") from err
    except yaml.YAMLError as err:
        raise CaptionerError(f"{path}: not valid YAML ({_yaml_line(err)})") from err
    if not isinstance(loaded, dict):
        raise CaptionerError(f"{path}: expected a mapping of settings at the top level")
    if _expanded_size(loaded, MAX_YAML_VALUES) > MAX_YAML_VALUES:
        raise CaptionerError(f"{path}: its aliases expand to more than {MAX_YAML_VALUES:,} values; "
                             "write the settings out")
    return loaded


def _expanded_size(value: Any, limit: int) -> int:
    """How many values `value` holds with every shared (aliased) one counted at each use; stops
    counting past `limit` (a self-referencing alias never ends)."""
    count, stack = 0, [value]
    while stack and count <= limit:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack += [*item.keys(), *item.values()]
        elif isinstance(item, (list, tuple, set)):
            stack += list(item)
    return count


def _yaml_line(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    return f"line {mark.line + 1}" if mark is not None else "parse error"


def _merge(base: Any, update: Any, source: str) -> Any:
    try:
        return OmegaConf.merge(base, update)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or ""
        raise CaptionerError(f"{source}: bad config key {key!r}: {one_line(err)}") from err


def to_dict(config: Config) -> dict[str, Any]:
    """Plain dict (safe for YAML, JSON and weights-only checkpoints)."""
    return OmegaConf.to_container(OmegaConf.structured(config), resolve=True)  # type: ignore[return-value]


def from_dict(data: dict[str, Any]) -> Config:
    """A Config from a plain dict (a checkpoint's, a run's), checked exactly as a user's."""
    try:
        config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), data))
    except OmegaConfBaseException as err:
        raise CaptionerError(f"bad configuration: {one_line(err)}") from err
    return validate(config)  # type: ignore[arg-type]


def to_yaml(config: Config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def declared(cls: type = Config, prefix: str = "") -> dict[str, dataclasses.Field]:
    """Every setting's dotted key ("decoder.cell") and its field, which holds its meaning and what
    it accepts (see `setting`)."""
    found: dict[str, dataclasses.Field] = {}
    for item in dataclasses.fields(cls):
        section = item.default_factory if item.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(section):
            found |= declared(section, f"{prefix}{item.name}.")  # type: ignore[arg-type]
        else:
            found[f"{prefix}{item.name}"] = item
    return found


def choices(key: str) -> tuple[str, ...]:
    """The words a setting accepts, where it takes one of a few (shell completion offers them)."""
    item = declared().get(key)
    return item.metadata.get("choices", ()) if item is not None else ()


def accepts(item: dataclasses.Field) -> str:
    """What a setting accepts, in words ("one of lstm, gru, rnn", "between 0 and 0.99"), or ""."""
    allowed, low, high = (item.metadata.get(k) for k in ("choices", "low", "high"))
    if allowed:
        return f"one of {', '.join(allowed)}"
    if low is None:
        return ""
    return f"at least {low:g}" if high is None else f"between {low:g} and {high:g}"


def monitor_mode(monitor: str) -> str:
    """"min" for the validation loss, "max" for the caption metrics."""
    return "min" if monitor == "val/loss" else "max"


def value_at(data: dict[str, Any], key: str) -> Any:
    """The value of a dotted key ("data.shapes.size") in a config dict."""
    for part in key.split("."):
        data = data[part]
    return data


def validate(config: Config) -> Config:
    """Reject values that parse but mean nothing, naming the setting and what it accepts."""
    data = to_dict(config)
    for key, value in _floats(data):
        if not math.isfinite(value):  # NaN passes every range check: each comparison is false
            raise CaptionerError(f"bad configuration: {key}={value}; it must be a finite number")
    for key, item in declared().items():
        value, allowed, low, high = value_at(data, key), *(item.metadata.get(k) for k in
                                                           ("choices", "low", "high"))
        if allowed and value not in allowed:
            raise CaptionerError(f"bad configuration: {key}={value!r}; choose one of {list(allowed)}")
        if low is not None and (value < low or (high is not None and value > high)):
            raise CaptionerError(f"bad configuration: {key}={value!r}; it must be {accepts(item)}")
    if not config.encoder.arch.startswith("vgg"):
        raise CaptionerError(f"bad configuration: encoder.arch={config.encoder.arch!r} is not a VGG")
    if config.encoder.resize_size < config.encoder.image_size:
        raise CaptionerError("bad configuration: encoder.resize_size must be at least encoder.image_size")
    devices = config.trainer.devices
    if devices != "auto" and not (devices.isdigit() and int(devices) >= 1):
        raise CaptionerError(f"bad configuration: trainer.devices={devices!r}; use auto or a number >= 1")
    if not _plain_name(config.name):
        raise CaptionerError(f"bad configuration: name={config.name!r}; it must be a plain folder name "
                             "(no / or \\, not empty, . or ..)")
    if config.eval.bootstrap != 0 and config.eval.bootstrap < 1000:
        raise CaptionerError("bad configuration: eval.bootstrap must be 0 (off) or at least 1000")
    _check_shapes_caption_length(config)
    return config


def _plain_name(name: str) -> bool:
    """Whether `name` names one folder inside output_dir: nothing that climbs out or goes deeper."""
    return bool(name) and name not in (".", "..") and not any(c in name for c in "/\\\0")


def _floats(data: dict[str, Any], prefix: str = "") -> list[tuple[str, float]]:
    """Every float setting as (dotted key, value)."""
    found = []
    for key, value in data.items():
        if isinstance(value, dict):
            found += _floats(value, f"{prefix}{key}.")
        elif isinstance(value, float):
            found.append((f"{prefix}{key}", value))
    return found


def shapes_caption_words(max_objects: int) -> int:
    """The most words a generated shapes caption can have: a phrasing's own words (up to 4, "a
    dark background with"), up to 4 per object ("two small red circles") and "and"."""
    return 4 + 4 * max_objects + (max_objects > 1)


def _check_shapes_caption_length(config: Config) -> None:
    # Cut captions would teach the decoder to stop before the last objects, the very ones a
    # crowded scene is there to test. The standard 1-3 objects are left as they were.
    d, shapes = config.data, config.data.shapes
    if d.dataset != "shapes" or d.root or shapes.max_objects <= 3:
        return
    words = shapes_caption_words(shapes.max_objects)
    if min(d.max_length, config.eval.max_length) < words:
        raise CaptionerError(
            f"bad configuration: data.shapes.max_objects={shapes.max_objects} makes captions of up "
            f"to {words} words; set data.max_length (now {d.max_length}) and eval.max_length "
            f"(now {config.eval.max_length}) to at least {words}")
