"""Reading a captions file's text, whatever encoding it came in.

A byte-order mark names UTF-8/16/32 (Excel writes "Unicode text" as UTF-16 with one); otherwise
the file is read as UTF-8 and bytes that are not UTF-8 come through as surrogate escapes, so one
stray Latin-1 byte costs its row (reported with its line) rather than the whole import. With
`--encoding` the file is decoded strictly in that encoding.
"""

from __future__ import annotations

import codecs
import re
from pathlib import Path

from captioner.errors import CaptionerError

BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
        (codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
_ESCAPED = re.compile("[\udc80-\udcff]")
ENCODING_HINT = "if the file is in another encoding, pass it with --encoding (e.g. --encoding cp1252)"


def check_encoding(encoding: str) -> None:
    try:
        codecs.lookup(encoding)
    except LookupError as err:
        raise CaptionerError(f"--encoding {encoding}: unknown encoding") from err


def read_text(path: Path, encoding: str | None = None) -> tuple[str, str]:
    """The file's text and the encoding it was read with."""
    data = path.read_bytes()
    if encoding is None:
        encoding = next((name for bom, name in BOMS if data.startswith(bom)), None)
        if encoding is None:
            return data.decode("utf-8", errors="surrogateescape"), "utf-8"
    try:
        return data.decode(encoding), encoding
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise CaptionerError(f"{path}:{line}: not valid {encoding} ({err.reason}); pass the file's "
                             "encoding with --encoding") from err


def first_line(path: Path, limit: int = 1 << 16) -> str:
    """The first non-blank line of a text file (from its first `limit` bytes), for detection."""
    with open(path, "rb") as f:
        head = f.read(limit)
    encoding = next((name for bom, name in BOMS if head.startswith(bom)), "utf-8")
    text = head.decode(encoding, errors="replace")
    return next((line.rstrip("\r") for line in text.split("\n") if line.strip()), "")


def undecodable(text: str) -> bool:
    """Whether `text` holds bytes that were not valid in the file's encoding."""
    return _ESCAPED.search(text) is not None
