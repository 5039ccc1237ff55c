"""What the commands tell a person, on stderr: stage lines, progress bars, warnings.

stdout carries results only (captions, JSON, the summary of a run). Everything here goes to
stderr: progress bars when stderr is a terminal, one line per stage when it is not, nothing but
errors with --quiet. Library noise a user cannot act on (adverts, deprecation warnings from
dependencies' internals, hardware banners) is silenced unless --verbose.
"""

from __future__ import annotations

import logging
import sys
import warnings

_state = {"quiet": False, "verbose": False}

# Warnings raised inside dependencies that say nothing a user of captioner can act on.
_NOISE = (
    r".*isinstance\(treespec, LeafSpec\)",
    r".*Found \d+ module\(s\) in eval mode",
    r".*number of training batches .* is smaller than the logging interval",
    r".*does not have many workers which may be a bottleneck",
    r".*The '(train|val)_dataloader' does not have many workers",
    r".*`weights_only` was not set",
)


def configure(*, quiet: bool = False, verbose: bool = False) -> None:
    """Set how much the commands say, and quieten the libraries unless `verbose`."""
    _state.update(quiet=quiet, verbose=verbose)
    if verbose:
        return
    quieten_lightning()
    for pattern in _NOISE:
        warnings.filterwarnings("ignore", message=pattern)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(lightning|torch|torchvision)\b.*")


def quieten_lightning() -> None:
    """Lightning's hardware banners and tips, off unless --verbose. Lightning sets its loggers'
    levels when it is imported, so this runs again once it is (captioner.training.trainer)."""
    if _state["verbose"]:
        return
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR if _state["quiet"] else logging.WARNING)


def say(message: str) -> None:
    """A stage line or note for the person at the terminal (stderr); nothing with --quiet."""
    if not _state["quiet"]:
        print(message, file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """A warning: shown unless --quiet."""
    say(f"warning: {message}")


def counted(n: int, noun: str) -> str:
    """"1 image", "2 images": a count with its noun in the right number (regular plurals)."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def bars() -> bool:
    """Whether progress bars are drawn: on a terminal, and not --quiet."""
    return not _state["quiet"] and sys.stderr.isatty()


def quiet() -> bool:
    return _state["quiet"]
