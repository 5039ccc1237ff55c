"""`key=value` settings on the command line: checked before anything loads (a wrong one is a
usage error, exit 2, that names the key and what it takes), and offered by shell completion.

The keys and their types come from the Config dataclasses themselves, so a new setting is
checked and completed without a word here.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any

from captioner.config import Config, load_config
from captioner.errors import CaptionerError, UsageError

_TAKES = {int: "a whole number", float: "a number", bool: "true or false", str: "a word or path"}


def settings(cls: type = Config, prefix: str = "") -> dict[str, Any]:
    """Every setting's dotted key ("decoder.cell") and its type."""
    found: dict[str, Any] = {}
    for name, kind in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(kind):
            found |= settings(kind, f"{prefix}{name}.")
        else:
            found[f"{prefix}{name}"] = kind
    return found


def check_overrides(overrides: list[str]) -> None:
    """Each override's form, key and value type, whatever the config file or checkpoint it will
    apply to; a wrong one is a UsageError saying which and what to do."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    known = settings()
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{item!r} is not of the form key=value (a setting, e.g. "
                             "decoder.cell=gru; captioner config show lists them)")
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]}?" if close else "captioner config show lists them"
            raise UsageError(f"unknown setting {key!r} ({hint})")
        try:
            OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException:
            takes = _takes(known[key])
            raise UsageError(f"bad value for {key}: {value!r} (it takes {takes})") from None


def _takes(kind: Any) -> str:
    if typing.get_origin(kind) is list:
        return "a list such as [a,b]"
    kinds = [k for k in typing.get_args(kind) if k is not type(None)] or [kind]  # str | None
    return _TAKES.get(kinds[0], "another value")


def load(path: Path | None, overrides: list[str]) -> Config:
    """The config from defaults, `path` and the overrides. What only the overrides make wrong
    (a value out of range, settings that contradict each other) is the command line's fault,
    exit 2; a wrong config file stays an error, exit 1."""
    check_overrides(overrides)
    try:
        return load_config(path, overrides)
    except CaptionerError as err:
        if not overrides:
            raise
        load_config(path, [])  # raises the file's own error, if it has one
        raise UsageError(str(err)) from None


def complete(prefix: str, **_: Any) -> list[str]:
    """argcomplete's completer for key=value: the keys ("decoder.cell="), then a key's values."""
    from captioner.config import choices

    known = settings()
    key, sep, _value = prefix.partition("=")
    if not sep:
        return [f"{k}=" for k in known if k.startswith(prefix)]
    values = ("true", "false") if known.get(key) is bool else choices(key)
    return [f"{key}={v}" for v in values if f"{key}={v}".startswith(prefix)]
