"""Readers of the caption formats people have: one function per layout, all giving the same rows.

A reader never stops at a bad row: it records the row's line (or JSON entry) and why, and goes
on. Only a file that cannot be read at all (not JSON, not the expected structure) is an error.

    CSV / TSV    image,caption            (header or not; more columns need a header naming them)
    JSONL        {"image": ..., "caption": ...} or {"image": ..., "captions": [...]}
    token        1000268201_693b08cb0e.jpg#0<TAB>A child ...     (Flickr8k.token.txt, Flickr30k's
                                                                  results_20130124.token)
    pipe         image_name| comment_number| comment             (Flickr30k's results.csv)
    COCO         {"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}
    Karpathy     {"images": [{"filepath", "filename", "split", "sentences": [{"raw"}], ...}]}
"""

from __future__ import annotations

import csv
import json
import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from captioner.data.importing.textfile import ENCODING_HINT, read_text, undecodable
from captioner.errors import CaptionerError

IMAGE_KEYS = ("image", "image_name", "image_path", "file_name", "filename", "file", "path", "img")
CAPTION_KEYS = ("caption", "comment", "text", "sentence", "description")
TOKEN_LINE = re.compile(r"(?P<image>[^\t]+?)#(?P<number>\d+)\t(?P<caption>.*)")
SPLIT_NAME = re.compile(r"[A-Za-z0-9_-]+")
PIPE_HEADER = re.compile(r"\s*image_name\s*\|", re.IGNORECASE)
Location = int | str  # a line number (text formats) or a JSON entry such as "annotations[3]"
# A captions row is a name and at most a few captions of check.MAX_CHARS; a longer line is a
# lost line break (and past 131,072 characters Python's csv module gives up on the rest).
MAX_LINE = 50_000
MAX_ID = 2 ** 63 - 1  # ids are stored as int64 (torch, numpy): a larger one crashes training


@dataclass(frozen=True, slots=True)  # slots: a million rows in a third of the memory
class Row:
    image: str  # as the source writes it: a name or path relative to the images folder
    caption: str
    loc: Location
    split: str | None = None  # the source's own split (Karpathy JSON)
    image_id: int | None = None  # the source's own id (COCO, Karpathy JSON)


@dataclass
class Source:
    path: Path
    format: str
    rows: list[Row] = field(default_factory=list)
    bad: list[tuple[Location, str, str]] = field(default_factory=list)  # (where, reason, message)
    encoding: str | None = None
    splits: dict[str, str] | None = None  # image -> split, where the source has splits
    split_origin: str = ""

    def reject(self, loc: Location, message: str, reason: str = "malformed") -> None:
        self.bad.append((loc, reason, message))

    def add(self, image: str, caption: str, loc: Location, split: str | None = None,
            image_id: int | None = None) -> None:
        """Keep a row (its image name normalised: "./a.jpg" is "a.jpg"), unless it names no image
        or the file's bytes under it were not valid in its encoding."""
        image = image.strip()
        if undecodable(image) or undecodable(caption):
            self.reject(loc, f"not valid {self.encoding}; {ENCODING_HINT}", "encoding")
        elif not image:
            self.reject(loc, "no image name")
        else:
            self.rows.append(Row(posixpath.normpath(image), caption, loc, split, image_id))


def _physical_lines(source: Source, text: str) -> Iterator[str]:
    """Each line of `text` with its line ending, one by one (a copy of a large file would double
    its memory); a line longer than MAX_LINE is rejected and given as an empty line, so the
    lines after it are still read and keep their numbers."""
    start, n = 0, 0
    while start < len(text):
        end = text.find("\n", start)
        end = len(text) if end < 0 else end + 1
        n += 1
        if end - start > MAX_LINE:
            source.reject(n, f"line of {end - start:,} characters (more than {MAX_LINE:,}: a lost "
                          "line break or quote?)", "overlong")
            yield "\n"
        else:
            yield text[start:end]
        start = end


def _lines(source: Source, text: str) -> Iterator[tuple[int, str]]:
    # str.splitlines would also split at U+2028 and friends inside captions, shifting line numbers.
    for n, line in enumerate(_physical_lines(source, text), 1):
        line = line.rstrip("\r\n")
        if line.strip():
            yield n, line


def read_token(source: Source, text: str) -> None:
    """Flickr's NAME#N<TAB>caption lines."""
    for n, line in _lines(source, text):
        match = TOKEN_LINE.fullmatch(line)
        if match is None:
            source.reject(n, "expected NAME.jpg#N<TAB>caption")
        else:
            source.add(match["image"], match["caption"], n)


def read_pipe(source: Source, text: str) -> None:
    """Flickr30k's results.csv: image_name| comment_number| comment, split at the first two pipes."""
    for n, line in _lines(source, text):
        if n == 1 and PIPE_HEADER.match(line):
            continue
        parts = [p.strip() for p in line.split("|", 2)]
        if len(parts) != 3 or not parts[1].isdigit():
            source.reject(n, "expected image_name| comment_number| comment")
        else:
            source.add(parts[0], parts[2], n)


def read_delimited(source: Source, text: str, delimiter: str) -> None:
    """CSV or TSV rows of image and caption, with or without a header naming the columns."""
    # TSV fields are not quoted: a caption starting with a quote mark is just that.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(_physical_lines(source, text), delimiter=delimiter, quoting=quoting)
    columns: tuple[int, int] | None = None
    width = 0
    start = 1
    try:
        for fields in reader:
            loc, start = start, reader.line_num + 1
            if not any(f.strip() for f in fields):
                continue
            if loc == 1 and (header := _header_columns(fields)) is not None:
                columns, width = header, len(fields)
                continue
            _delimited_row(source, fields, loc, delimiter, columns, width)
    except csv.Error as err:  # e.g. a quote never closed swallowed the rest of a large file
        source.reject(start, f"{err}; the rows from here on are lost (a quoted caption never closed?)")


def _header_columns(fields: list[str]) -> tuple[int, int] | None:
    names = [f.strip().lower() for f in fields]
    image = next((names.index(k) for k in IMAGE_KEYS if k in names), None)
    caption = next((names.index(k) for k in (*CAPTION_KEYS, "captions") if k in names), None)
    return None if image is None or caption is None else (image, caption)


def _delimited_row(source: Source, fields: list[str], loc: int, delimiter: str,
                   columns: tuple[int, int] | None, width: int) -> None:
    if columns is None or width == 2:
        if len(fields) < 2:
            source.reject(loc, "expected image and caption columns")
            return
        # Two columns: a caption holding unquoted delimiters is the rest of the row.
        if columns is None or columns[0] == 0:
            image, caption = fields[0], delimiter.join(fields[1:])
        else:
            image, caption = fields[-1], delimiter.join(fields[:-1])
        source.add(image, caption, loc)
    elif len(fields) != width:
        source.reject(loc, f"{len(fields)} columns, the header has {width}")
    else:
        source.add(fields[columns[0]], fields[columns[1]], loc)


def read_jsonl(source: Source, text: str) -> None:
    """One JSON object per line with an image and a caption or a list of captions."""
    for n, line in _lines(source, text):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            source.reject(n, f"not JSON ({err.msg})")
            continue
        image = next((record[k] for k in IMAGE_KEYS if k in record), None) \
            if isinstance(record, dict) else None
        captions = _jsonl_captions(record) if isinstance(record, dict) else None
        if not isinstance(image, str) or captions is None:
            source.reject(n, 'expected {"image": ..., "caption": ...} or "captions": [...]')
            continue
        for caption in captions:
            source.add(image, caption, n)


def _jsonl_captions(record: dict[str, Any]) -> list[str] | None:
    captions = record.get("captions", [record["caption"]] if "caption" in record else None)
    if isinstance(captions, str):
        captions = [captions]
    if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
        return None
    return captions


def load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())  # bytes: json detects UTF-8/16/32 itself
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CaptionerError(f"{path}: not valid JSON ({err})") from err


def source_id(value: Any) -> int:
    """An id as the source writes it, if it is a whole number that int64 holds; else ValueError.
    JSON's true and false are not ids (Python would take them as 1 and 0), nor is 1.5."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ID:
        raise ValueError(f"image id {value!r} is not a whole number from 0 to 2**63-1")
    return value


def read_coco(source: Source) -> None:
    """A COCO captions file: image entries, then caption annotations pointing at them."""
    data = load_json(source.path)
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list)
                                             for k in ("images", "annotations")):
        raise CaptionerError(f"{source.path}: not a COCO captions file (expected 'images' and "
                             "'annotations' lists)")
    names, shared = _coco_images(source, data["images"])
    for n, annotation in enumerate(data["annotations"]):
        loc = f"annotations[{n}]"
        try:
            image_id, caption = source_id(annotation["image_id"]), annotation["caption"]
        except (KeyError, TypeError, ValueError) as err:
            source.reject(loc, f"annotation without a usable image_id and caption ({err!r})")
            continue
        if image_id in shared:
            source.reject(loc, f"caption of image id {image_id}, which several image entries have",
                          "duplicate_id")
        elif image_id not in names or not isinstance(caption, str):
            source.reject(loc, f"caption of image id {image_id}, which no image entry has"
                          if image_id not in names else "caption is not a string")
        else:
            source.add(names[image_id], caption, loc, image_id=image_id)


def _coco_images(source: Source, images: list) -> tuple[dict[int, str], set[int]]:
    """id -> file name of the usable image entries, and the ids several entries share: which of
    them a caption belongs to cannot be told, so those entries and captions are all left out."""
    entries: dict[int, list[tuple[int, str]]] = {}
    for n, image in enumerate(images):
        try:
            entries.setdefault(source_id(image["id"]), []).append((n, str(image["file_name"])))
        except (KeyError, TypeError, ValueError) as err:
            source.reject(f"images[{n}]", f"image entry without a usable id and file_name ({err!r})")
    shared = {image_id for image_id, found in entries.items() if len(found) > 1}
    for image_id in shared:
        where = ", ".join(f"images[{n}]" for n, _ in entries[image_id])
        for n, _ in entries[image_id]:
            source.reject(f"images[{n}]", f"image id {image_id} is given to several images ({where})",
                          "duplicate_id")
    return {i: found[0][1] for i, found in entries.items() if i not in shared}, shared


def read_karpathy(source: Source) -> None:
    """Karpathy's dataset_*.json: each image with its folder, name, split and sentences."""
    data = load_json(source.path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise CaptionerError(f"{source.path}: not a Karpathy split file (expected an 'images' list)")
    source.splits, source.split_origin = {}, f"{source.path.name} (Karpathy's split)"
    for n, image in enumerate(data["images"]):
        loc = f"images[{n}]"
        try:
            name = str(PurePosixPath(image.get("filepath", "")) / image["filename"])
            split, sentences = str(image["split"]), image["sentences"]
            image_id = image.get("cocoid", image.get("imgid"))
            image_id = None if image_id is None else source_id(image_id)
            captions = [s["raw"] for s in sentences]
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            source.reject(loc, f"image entry without filename, split and sentences ({err!r})")
            continue
        if not SPLIT_NAME.fullmatch(split):  # it names a file: annotations/captions_<split>.json
            source.reject(loc, f"split {split!r} is not a name of letters, digits, - and _")
            continue
        source.splits.setdefault(name, split)
        for k, caption in enumerate(captions):
            if isinstance(caption, str):
                source.add(name, caption, f"{loc}.sentences[{k}]", split, image_id)
            else:
                source.reject(f"{loc}.sentences[{k}]", "sentence 'raw' is not a string")


def read_text_source(source: Source, encoding: str | None, kind: str) -> None:
    """Decode the file, then read it as `kind`: token, pipe, csv, tsv or jsonl."""
    text, source.encoding = read_text(source.path, encoding)
    if kind in ("csv", "tsv"):
        read_delimited(source, text, "," if kind == "csv" else "\t")
    else:
        {"token": read_token, "pipe": read_pipe, "jsonl": read_jsonl}[kind](source, text)
