"""How captions are generated: beam search or sampling, and their settings, checked in one place.

Free of torch, so the command line checks a user's options before it loads anything heavy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from captioner.errors import CaptionerError

# What one caption request may ask for, from the command line, the Python API or the server alike:
# the beam's memory and time grow with its width times the caption's length (a beam of 1,000,000
# asked torch for 27 GB; 20,000 took 47 s for one image), and no caption needs more than a hundred
# words or twenty alternatives.
MAX_BEAM = 20
MAX_WORDS = 100
# GNMT's alpha is usually 0 to 1; past a few, ((5 + words) / 6) ** alpha overflows a float.
MAX_LENGTH_PENALTY = 10.0


@dataclass(frozen=True)
class Decoding:
    """How captions are generated. Beam search keeps the `n_best` best beams; sampling draws
    `n_best` captions per image (most likely first) from the model's distribution sharpened by
    `temperature`, restricted to the `top_k` most likely words at each step when top_k > 0."""

    beam_size: int = 3
    n_best: int = 1
    max_length: int | None = None  # words + end token; default: the checkpoint's eval.max_length
    length_penalty: float = 0.0  # GNMT alpha; 0 ranks by plain log-probability
    sample: bool = False
    temperature: float = 1.0
    top_k: int = 0

    def __post_init__(self) -> None:
        max_length = 1 if self.max_length is None else self.max_length  # None: the checkpoint's
        try:
            check_options(beam_size=self.beam_size if not self.sample else self.n_best,
                          n_best=self.n_best, max_length=max_length,
                          temperature=self.temperature, top_k=self.top_k)
        except ValueError as err:
            raise CaptionerError(str(err)) from None
        over = [f"{name} must be at most {most}, got {value}" for name, value, most in (
            ("beam_size", self.beam_size, MAX_BEAM), ("n_best", self.n_best, MAX_BEAM),
            ("max_length", max_length, MAX_WORDS)) if value > most]
        if not abs(self.length_penalty) <= MAX_LENGTH_PENALTY:  # NaN ranks every beam equal
            over.append(f"length_penalty must be from {-MAX_LENGTH_PENALTY:g} to "
                        f"{MAX_LENGTH_PENALTY:g}, got {self.length_penalty}")
        if not math.isfinite(self.temperature):
            over.append(f"temperature must be a finite number, got {self.temperature}")
        if over:
            raise CaptionerError(over[0])


def check_options(*, beam_size: int = 1, n_best: int = 1, max_length: int = 1,
                  temperature: float = 1.0, top_k: int = 0) -> None:
    """Refuse search settings that cannot work (the one place they are checked)."""
    problems = [
        (beam_size < 1, f"beam_size must be at least 1, got {beam_size}"),
        (n_best < 1, f"n_best must be at least 1, got {n_best}"),
        (n_best > beam_size, f"n_best={n_best} needs beam_size >= {n_best}, got {beam_size}"),
        (max_length < 1, f"max_length must be at least 1, got {max_length}"),
        (not temperature > 0, f"temperature must be positive, got {temperature}"),
        (top_k < 0, f"top_k must be >= 0 (0: the whole vocabulary), got {top_k}"),
    ]
    for failed, message in problems:
        if failed:
            raise ValueError(message)
