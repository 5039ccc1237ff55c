"""How captions are generated: beam search or sampling, and their settings, declared and checked
in one place.

Each option of `Decoding` is declared once, with its default, its meaning and its limits; the
command line's options (`captioner caption`, `captioner evaluate`), the Python API's keywords
and the server's form fields are built from these declarations. Free of torch, so the command
line checks a user's options before it loads anything heavy.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from captioner.errors import CaptionerError

# What one caption request may ask for, from the command line, the Python API or the server alike:
# the beam's memory and time grow with its width times the caption's length (a beam of 1,000,000
# asked torch for 27 GB; 20,000 took 47 s for one image), and no caption needs more than a hundred
# words or twenty alternatives.
MAX_BEAM = 20
MAX_WORDS = 100
# GNMT's alpha is usually 0 to 1; past a few, ((5 + words) / 6) ** alpha overflows a float.
MAX_LENGTH_PENALTY = 10.0


def option(default: Any, help: str, *, low: float | None = None, high: float | None = None,
           positive: bool = False, note: str = "", none: str = "", sampling: bool = False) -> Any:
    """A decoding option: its default, what it means (`help`, as the command line shows it) and
    what it accepts: a finite number from `low` (to `high`), or above 0 (`positive`). `note` is
    said after a value below `low`; `none`: what a default of None stands for; `sampling`: the
    option matters only when sampling (on the command line, giving it implies --sample)."""
    return field(default=default, metadata={"help": help, "low": low, "high": high, "positive": positive,
                                            "note": note, "none": none, "sampling": sampling})


@dataclass(frozen=True)
class Decoding:
    """How captions are generated. Beam search keeps the `n_best` best beams; sampling draws
    `n_best` captions per image (most likely first) from the model's distribution sharpened by
    `temperature`, restricted to the `top_k` most likely words at each step when top_k > 0."""

    beam_size: int = option(3, "beam width", low=1, high=MAX_BEAM)
    n_best: int = option(1, "print the N best beams (or N samples) with their log-probabilities",
                         low=1, high=MAX_BEAM)
    max_length: int | None = option(None, "most words per caption", low=1, high=MAX_WORDS,
                                    none="the checkpoint's eval.max_length")
    length_penalty: float = option(0.0, "GNMT length penalty alpha (0 ranks by log-probability)",
                                   low=-MAX_LENGTH_PENALTY, high=MAX_LENGTH_PENALTY)
    sample: bool = option(False, "sample captions instead of beam search")
    temperature: float = option(1.0, "sampling temperature, below 1 sharper", positive=True,
                                sampling=True)
    top_k: int = option(0, "sample among the K most likely words (0: all)", low=0,
                        note="(0: the whole vocabulary)", sampling=True)

    def __post_init__(self) -> None:
        given = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        problems = [problem(name, value, limits=True) for name, value in given.items()]
        problems.append(None if self.sample else _n_best_problem(self.n_best, self.beam_size))
        first = next((p for p in problems if p), None)
        if first:
            raise CaptionerError(first)

    @classmethod
    def of(cls, decoding: Decoding | None = None, **options: Any) -> Decoding:
        """`decoding` (default: the defaults) with `options` (any of its fields) changed, checked;
        an unknown option is a CaptionerError naming the known ones."""
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise CaptionerError(f"unknown decoding option {unknown[0]!r}; the options are "
                                 f"{', '.join(OPTIONS)}")
        return dataclasses.replace(decoding or cls(), **options)


OPTIONS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(Decoding)}


def problem(name: str, value: Any, *, limits: bool = False) -> str | None:
    """What is wrong with `value` for the option `name`, or None. Without `limits` only what
    cannot work is refused (a width below 1, a temperature of 0), not what a request may not ask
    for (a beam over MAX_BEAM): search's own check, which evaluation and training also reach."""
    meta = OPTIONS[name].metadata
    if value is None or isinstance(value, bool):
        return None
    if not math.isfinite(value):  # NaN passes every comparison below
        return f"{name} must be a finite number, got {value}"
    if meta["positive"] and not value > 0:
        return f"{name} must be positive, got {value}"
    if meta["low"] is not None and value < meta["low"]:
        note = f" {meta['note']}" if meta["note"] else ""
        return f"{name} must be at least {meta['low']:g}{note}, got {value}"
    if limits and meta["high"] is not None and value > meta["high"]:
        return f"{name} must be at most {meta['high']:g}, got {value}"
    return None


def _n_best_problem(n_best: int, beam_size: int) -> str | None:
    return f"n_best={n_best} needs beam_size >= {n_best}, got {beam_size}" if n_best > beam_size else None


def check_options(**values: Any) -> None:
    """Refuse search settings that cannot work (given by name, any of Decoding's fields), as
    ValueError: what the search functions check of their own arguments."""
    problems = [problem(name, value) for name, value in values.items()]
    if "n_best" in values and "beam_size" in values:
        problems.append(_n_best_problem(values["n_best"], values["beam_size"]))
    first = next((p for p in problems if p), None)
    if first:
        raise ValueError(first)
