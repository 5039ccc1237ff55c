"""What a caption request may ask for (options read from form fields or query parameters) and
the limits the server holds every request to, checked in one place; free of torch and aiohttp."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from captioner.data.images import MAX_PIXELS
from captioner.errors import CaptionerError
from captioner.model.decoding import MAX_BEAM, MAX_WORDS, OPTIONS, Decoding  # noqa: F401 (the limits)

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


class RequestError(Exception):
    """A request the server refuses: an HTTP status (4xx) and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """What one request may send (larger ones are refused with a 4xx, undecoded) and what the
    server holds for all clients together, so that no client can starve the others."""

    max_upload_bytes: int = 20 * 2**20  # the whole request body, multipart framing included
    max_images: int = 64  # image fields in one request
    max_pixels: int = MAX_PIXELS  # per image, checked before decoding (decompression bombs)
    # Decoded pixels of one request's images together (after JPEG's reduced decoding): three
    # 9000 x 9000 PNGs, or 64 phone photos.
    max_request_pixels: int = 256_000_000
    batch_size: int = 32  # most images per forward pass; more wait for the next pass
    header_timeout: float = 10.0  # seconds from a connection (or its last answer) to a request's headers
    body_timeout: float = 60.0  # seconds from the headers to the end of the body
    # Open connections; past it the oldest one still sending its request is closed. Lowered to
    # fit the process's limit on open files (see guard.connection_cap).
    max_connections: int = 512
    max_buffered_bytes: int = 256 * 2**20  # request bodies held in memory, all requests together
    shutdown_grace: float = 10.0  # seconds a SIGTERM leaves the requests in flight to finish

    @property
    def max_parts(self) -> int:
        """Multipart parts in one request: the images and each option once."""
        return self.max_images + len(_PARSERS)


@dataclass(frozen=True)
class Options:
    """One request's captioning options: how to search, and whether to explain each word."""

    decoding: Decoding = Decoding()
    explain: bool = False


def parse_options(pairs: Iterable[tuple[str, str]]) -> Options:
    """Options from (name, value) pairs, query parameters and form fields together; an unknown
    or repeated name, or a bad value, is a RequestError(400) saying which."""
    given: dict[str, str] = {}
    for name, value in pairs:
        if name not in _PARSERS:
            raise RequestError(400, f"unknown option {name!r}; the options are {', '.join(_PARSERS)}")
        if name in given:
            raise RequestError(400, f"option {name!r} given twice")
        given[name] = value.strip()
    values = {name: _PARSERS[name](name, text) for name, text in given.items()}
    explain = bool(values.pop("explain", False))
    try:
        return Options(Decoding(**values), explain)
    except CaptionerError as err:
        raise RequestError(400, str(err)) from None


def _whole(low: int, high: int):
    def parse(name: str, text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise RequestError(400, f"{name}: not a whole number: {text!r}") from None
        if not low <= value <= high:
            raise RequestError(400, f"{name} must be from {low} to {high}, got {value}")
        return value
    return parse


def _number(low: float, high: float):
    def parse(name: str, text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise RequestError(400, f"{name}: not a number: {text!r}")
        if not low <= value <= high:
            raise RequestError(400, f"{name} must be from {low:g} to {high:g}, got {value:g}")
        return value
    return parse


def _flag(name: str, text: str) -> bool:
    if text.lower() not in _TRUE + _FALSE:
        raise RequestError(400, f"{name}: say 1 or 0 (true/false, yes/no, on/off), got {text!r}")
    return text.lower() in _TRUE


def _parser(name: str):
    """A form field's parser with the limits Decoding declares for that option."""
    meta = OPTIONS[name].metadata
    return (_whole if OPTIONS[name].type.startswith("int") else _number)(meta["low"], meta["high"])


# The beam search options a request may set (sampling is not served).
_PARSERS = {**{name: _parser(name) for name in ("beam_size", "n_best", "max_length", "length_penalty")},
            "explain": _flag}
