"""Opening checkpoints safely: weights-only unpickling, and clear errors for bad files."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from captioner.errors import CaptionerError


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A captioner checkpoint's contents; `weights_only` so opening one cannot run code."""
    path = Path(path)
    if not path.is_file():
        raise CaptionerError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError,
            ValueError, AttributeError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CaptionerError(f"{path}: not a readable checkpoint ({first[:200]})") from err
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if not isinstance(hparams, dict) or not {"config", "vocab"} <= hparams.keys():
        raise CaptionerError(f"{path}: not a captioner checkpoint (no config and vocabulary inside)")
    if "state_dict" not in checkpoint:
        raise CaptionerError(f"{path}: checkpoint holds no model weights")
    return checkpoint


def model_state(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The CaptionModel's weights (the LightningModule stores them under `model.`)."""
    prefix = "model."
    return {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
