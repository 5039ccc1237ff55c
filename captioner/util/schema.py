"""The schema version every JSON file the project writes and reads again carries, checked in one
way: a file of another version is a one-line error naming it; a file without one was written
before versions existed and is read as version 1 (the records check that its fields are)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from captioner.errors import CaptionerError


def check_version(data: Mapping[str, Any], where: str | Path, what: str, version: int,
                  again: str) -> None:
    """Refuse `data` unless its schema_version is `version` (missing: 1). `what` names the
    record, `again` says how to write it anew ("evaluate again")."""
    found = data.get("schema_version", 1)
    if found != version:
        raise CaptionerError(f"{where}: {what} of schema version {found!r}; this captioner reads "
                             f"version {version}: {again} with this version")


def check_record(data: Any, where: str | Path, what: str, version: int, again: str) -> None:
    """Refuse `data` unless it is a JSON object (what `what`, a file name, holds) of `version`."""
    if not isinstance(data, dict):
        raise CaptionerError(f"{where}: not a captioner {what}")
    check_version(data, where, what, version, again)


@contextmanager
def fields_of(where: str | Path, what: str) -> Iterator[None]:
    """Building a record from parsed JSON: a missing or malformed field is one line naming the file."""
    try:
        yield
    except (KeyError, TypeError, AttributeError) as err:
        raise CaptionerError(f"{where}: not a captioner {what} (missing or malformed: {err})") from err


def read_json(where: str | Path, text: str) -> Any:
    """`text` parsed; invalid JSON is a one-line error naming `where`."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise CaptionerError(f"{where}: not valid JSON ({err.msg}, line {err.lineno})") from err
