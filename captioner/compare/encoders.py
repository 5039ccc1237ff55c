"""The frozen encoder every cell of a comparison shares: a trained checkpoint's, an encoder file's
(from `captioner pretrain`), or the config's.

Only the decoder differs between cells, so all of them read one set of fc7 features, extracted
once by this encoder (or read from the cache).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from captioner.config import Config, from_dict, to_dict, validate
from captioner.data.prepare import PreparedData
from captioner.errors import CaptionerError
from captioner.model.checkpoint import CheckpointMeta, load_checkpoint, model_state
from captioner.model.encoder import VGGEncoder, build_encoder, weights_meta
from captioner.training.train import prepare_encoder_weights
from captioner.util.runs import LATEST, latest_checkpoint


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
    weights = prepare_encoder_weights(cell_config(config, config.decoder.cell), data)  # may pretrain
    encoder = build_encoder(c.arch, weights, seed=config.trainer.seed)
    initialised = {"none": " (random initialisation, seeded)",
                   "pretrain": " (a classifier pretrained on the dataset's objects)"}.get(c.weights, "")
    return EncoderSource(encoder, c.arch, c.image_size, c.resize_size,
                         f"the config's encoder: {c.arch}, encoder.weights={c.weights}{initialised}, "
                         "no trained run to take one from", None)


def source_encoder(path: Path, config: Config) -> EncoderSource:
    """The encoder in `path`: a training checkpoint, or a weights file (.pth)."""
    if path.suffix != ".pth":
        return checkpoint_encoder(path)
    if not path.is_file():
        raise CaptionerError(f"--encoder-from: encoder file not found: {path}")
    return file_encoder(path, config)


def file_encoder(path: Path, config: Config) -> EncoderSource:
    """The encoder of a weights file; `captioner pretrain` records the architecture and image size
    it was trained at, a plain torchvision state dict takes the config's."""
    meta, c = weights_meta(path), config.encoder
    arch = meta.get("arch", c.arch)
    image_size, resize_size = meta.get("image_size", c.image_size), meta.get("resize_size", c.resize_size)
    encoder = build_encoder(arch, str(path))
    made = "pretrained by captioner pretrain" if meta else "a torchvision state dict"
    return EncoderSource(encoder, arch, image_size, resize_size,
                         f"the encoder file {path} ({arch} at {image_size}px, {made})", None)


def checkpoint_encoder(path: Path) -> EncoderSource:
    """The encoder of a trained checkpoint, with the architecture and image size it used."""
    checkpoint = load_checkpoint(path)
    c = from_dict(CheckpointMeta.from_json(checkpoint, path).config).encoder
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
