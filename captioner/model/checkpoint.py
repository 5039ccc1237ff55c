"""Opening checkpoints safely: weights-only unpickling, checked configs, and clear errors for bad files.

A captioner checkpoint is a Lightning checkpoint; what it says of itself beside the weights is
one record, `CheckpointMeta`: the config (a plain dict), the vocabulary (a list of words), the
package version that wrote it, a frozen run's encoder file and a self-critical run's mark, with
its schema version. A checkpoint is data from somewhere: nothing in it runs (weights-only
unpickling), its config may not reach into the environment (no OmegaConf interpolations), and its
layer sizes are checked against its weights before any memory is allocated for them.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from captioner.config import Config, from_dict, load_config
from captioner.data.vocab import Vocabulary
from captioner.errors import CaptionerError, one_line
from captioner.model.network import CaptionModel, build_model
from captioner.model.stored_encoder import RECORD, restore
from captioner.util.schema import check_version
from captioner.version import __version__

# Settings of captioner 0.1's training recipe (a CNN fine-tuned from scratch with an auxiliary
# loss and a freeze window), which later versions dropped: ignored when a 0.1 checkpoint is read.
LEGACY_KEYS = {
    "encoder": ("fc_lr", "freeze_after_epoch"),
    "optim": ("concept_weight", "concept_agreement", "concept_window", "schedule", "warmup",
              "anneal_decoder", "decoder_cooldown"),
}


SCHEMA_VERSION = 1
PHASE, SELF_CRITICAL = "captioner_phase", "self-critical"  # a self-critical run's mark


@dataclass(frozen=True)
class CheckpointMeta:
    """What a captioner checkpoint records beside its weights, in the entries of Lightning's
    checkpoint dict: `hyper_parameters` (config, vocabulary, the version that wrote it, the
    schema version), `captioner_encoder` (a frozen run's encoder file and its hash, see
    model/stored_encoder.py) and `captioner_phase` (set by self-critical training). A checkpoint
    written before the schema version existed is read as version 1."""

    config: dict[str, Any]
    vocab: list[str]
    captioner_version: str | None = __version__  # None: written before versions were recorded
    encoder: dict[str, Any] | None = None
    self_critical: bool = False

    def to_json(self) -> dict[str, Any]:
        """The checkpoint entries this record writes (each replaces the entry of that name)."""
        entries: dict[str, Any] = {"hyper_parameters": {
            "config": self.config, "vocab": self.vocab, "captioner_version": self.captioner_version,
            "schema_version": SCHEMA_VERSION}}
        if self.encoder is not None:
            entries[RECORD] = self.encoder
        if self.self_critical:
            entries[PHASE] = SELF_CRITICAL
        return entries

    @classmethod
    def from_json(cls, checkpoint: Any, where: str | Path) -> CheckpointMeta:
        """The record of a loaded checkpoint dict; one line naming `where` if it holds none."""
        hparams = hyper_parameters(checkpoint, where, "vocab",
                                   "not a captioner checkpoint (no config and vocabulary inside)")
        check_version(hparams, where, "checkpoint", SCHEMA_VERSION, "train it again")
        encoder = checkpoint.get(RECORD)
        return cls(hparams["config"], hparams["vocab"], recorded_version(hparams),
                   encoder if isinstance(encoder, dict) else None, checkpoint.get(PHASE) == SELF_CRITICAL)

    @property
    def written_by(self) -> str:
        return self.captioner_version or "an unknown version"


def hyper_parameters(checkpoint: Any, where: str | Path, key: str, refusal: str) -> dict[str, Any]:
    """A loaded checkpoint's `hyper_parameters`, if they hold a config and the list `key`;
    otherwise `refusal`, one line naming `where`."""
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if not isinstance(hparams, dict) or not (
        isinstance(hparams.get("config"), dict) and isinstance(hparams.get(key), list)
    ):
        raise CaptionerError(f"{where}: {refusal}")
    return hparams


def recorded_version(hparams: dict[str, Any]) -> str | None:
    """The captioner version recorded in `hyper_parameters`; None before versions were recorded."""
    version = hparams.get("captioner_version")
    return None if version is None else str(version)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A captioner checkpoint's contents; `weights_only` so opening one cannot run code.

    Zip checkpoints (all that torch.save writes nowadays) are memory-mapped: tensors nobody
    reads, such as the optimizer state, never leave the disk. A frozen run's checkpoint names its
    encoder file instead of holding it; the weights come back from that file, hash checked.
    """
    path = Path(path)
    if path.is_dir():
        raise CaptionerError(f"{path}: is a directory, not a checkpoint")
    if not path.is_file():
        raise CaptionerError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True,
                                mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:
        raise CaptionerError(_unpickling_message(path, err)) from err
    except Exception as err:  # garbage makes the unpickler fail in any number of ways
        raise CaptionerError(f"{path}: not a readable checkpoint ({one_line(err)})") from err
    CheckpointMeta.from_json(checkpoint, path)
    if not isinstance(checkpoint.get("state_dict"), dict):
        raise CaptionerError(f"{path}: checkpoint holds no model weights")
    restore(checkpoint, path)  # a frozen run's encoder, kept once beside its checkpoints
    return checkpoint


def model_state(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The CaptionModel's weights (the LightningModule stores them under `model.`)."""
    prefix = "model."
    return {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}


def checkpoint_config(checkpoint: dict[str, Any], path: Path,
                      overrides: list[str] | None = None) -> tuple[Config, Vocabulary, bool]:
    """The config (plus `overrides`) and vocabulary a checkpoint was trained with, and whether it
    came from captioner 0.1 (whose recipe's settings are dropped)."""
    meta = CheckpointMeta.from_json(checkpoint, path)
    version = meta.written_by
    raw = meta.config
    refuse_interpolations(raw, path)
    legacy = any(key in raw.get(section, {}) for section, keys in LEGACY_KEYS.items() for key in keys)
    base = {section: ({k: v for k, v in value.items() if k not in LEGACY_KEYS.get(section, ())}
                      if isinstance(value, dict) else value) for section, value in raw.items()}
    try:
        config = load_config(None, overrides, base=base) if overrides else from_dict(base)
        vocab = Vocabulary(meta.vocab)
    except CaptionerError as err:
        if overrides:
            raise
        if (meta.captioner_version or __version__) != __version__:  # another version's settings
            raise CaptionerError(f"{path}: its config does not fit this captioner (written by "
                                 f"captioner {version}): {err}") from None
        raise CaptionerError(f"{path}: {err}") from None  # its own config, checked as a user's
    except Exception as err:  # OmegaConf's or the vocabulary's complaint, whatever its type
        raise CaptionerError(f"{path}: its config or vocabulary does not fit this captioner "
                             f"(written by captioner {version}): {one_line(err, 300)}") from err
    return config, vocab, legacy


def resume_config(checkpoint: dict[str, Any], path: Path, overrides: list[str]) -> tuple[Config, Vocabulary]:
    """What a resumed run trains with: the checkpoint's config plus `overrides`, checked."""
    config, vocab, legacy = checkpoint_config(checkpoint, path, overrides)
    if legacy:
        version = CheckpointMeta.from_json(checkpoint, path).written_by
        raise CaptionerError(f"{path}: written by captioner {version}, whose training "
                             "recipe this version no longer has; caption and evaluate still read it, "
                             "but it cannot be resumed")
    refuse_weights_only(checkpoint, path)
    check_weights_fit(config, vocab, model_state(checkpoint), path)
    # Where a new run folder goes is the user's to say (the default, or output_dir=...), never
    # the checkpoint's: one from elsewhere could name any folder on the machine.
    output_dir = load_config(None, [o for o in overrides if o.startswith("output_dir=")]).output_dir
    return replace(config, output_dir=output_dir), vocab


def refuse_weights_only(checkpoint: dict[str, Any], path: Path) -> None:
    """A best.ckpt that is no longer last.ckpt keeps the weights only: resuming needs last.ckpt."""
    if "optimizer_states" not in checkpoint:
        raise CaptionerError(f"{path}: holds the weights only (a best.ckpt keeps no optimiser state "
                             f"once a later epoch is last); resume from {path.with_name('last.ckpt')}")


def check_weights_fit(config: Config, vocab: Vocabulary, state: Mapping[str, torch.Tensor],
                      path: Path) -> CaptionModel:
    """The model `config` describes, built on the meta device (no memory), after checking that
    every weight in `state` has the shape the config gives it."""
    with torch.device("meta"):
        model = build_model(config, len(vocab), vocab.pad)
    expected = model.state_dict()
    for name, tensor in expected.items():
        got = state.get(name)
        if got is None or tuple(got.shape) != tuple(tensor.shape):
            found = "missing" if got is None else f"has shape {tuple(got.shape)}"
            raise CaptionerError(f"{path}: weights do not match its own config: {name} {found}, the "
                                 f"config gives {tuple(tensor.shape)}")
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise CaptionerError(f"{path}: weights do not match its own config: unexpected {unexpected[0]}")
    return model


def refuse_interpolations(value: Any, path: Path, key: str = "") -> None:
    """A loaded config is data: an OmegaConf interpolation (`${oc.env:SECRET}`) would read the
    environment of whoever opens it and write the result into new run folders."""
    if isinstance(value, dict):
        for k, v in value.items():
            refuse_interpolations(v, path, f"{key}.{k}" if key else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            refuse_interpolations(v, path, f"{key}[{i}]")
    elif isinstance(value, str) and "${" in value:
        raise CaptionerError(f"{path}: refused: its config setting {key} holds an interpolation "
                             f"({value[:60]!r}); a checkpoint's config must be plain values")


def _unpickling_message(path: Path, err: pickle.UnpicklingError) -> str:
    blocked = re.search(r"GLOBAL ([\w.]+)", str(err))
    if blocked is None:  # torch's message would suggest weights_only=False: not for garbage
        return f"{path}: not a readable checkpoint (not a file torch.save wrote, or a damaged one)"
    return (f"{path}: refused: it needs {blocked.group(1)}, which a weights-only load does not "
            "allow (a checkpoint holds tensors and plain data; unpickling this one could run code)")
