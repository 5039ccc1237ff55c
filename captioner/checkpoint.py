"""Opening checkpoints safely: weights-only unpickling, and clear errors for bad files.

A captioner checkpoint is a Lightning checkpoint whose `hyper_parameters` hold the config (a
plain dict), the vocabulary (a list of words) and `captioner_version`, the package version that
wrote it.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from captioner.errors import CaptionerError


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A captioner checkpoint's contents; `weights_only` so opening one cannot run code.

    Zip checkpoints (all that torch.save writes nowadays) are memory-mapped: tensors nobody
    reads, such as the optimizer state, never leave the disk.
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
        raise CaptionerError(f"{path}: not a readable checkpoint ({_first_line(err)})") from err
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if not isinstance(hparams, dict) or not (
        isinstance(hparams.get("config"), dict) and isinstance(hparams.get("vocab"), list)
    ):
        raise CaptionerError(f"{path}: not a captioner checkpoint (no config and vocabulary inside)")
    if not isinstance(checkpoint.get("state_dict"), dict):
        raise CaptionerError(f"{path}: checkpoint holds no model weights")
    return checkpoint


def saved_by(checkpoint: dict[str, Any]) -> str:
    """The captioner version that wrote the checkpoint."""
    return str(checkpoint["hyper_parameters"].get("captioner_version", "an unknown version"))


def model_state(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The CaptionModel's weights (the LightningModule stores them under `model.`)."""
    prefix = "model."
    return {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}


def _unpickling_message(path: Path, err: pickle.UnpicklingError) -> str:
    blocked = re.search(r"GLOBAL ([\w.]+)", str(err))
    if blocked is None:  # torch's message would suggest weights_only=False: not for garbage
        return f"{path}: not a readable checkpoint (not a file torch.save wrote, or a damaged one)"
    return (f"{path}: refused: it needs {blocked.group(1)}, which a weights-only load does not "
            "allow (a checkpoint holds tensors and plain data; unpickling this one could run code)")


def _first_line(err: BaseException) -> str:
    """The first sentence of an error message (torch's go on for a paragraph)."""
    text = str(err).strip()
    return text.splitlines()[0].split(". ")[0][:200] if text else type(err).__name__
