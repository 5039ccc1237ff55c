"""Which file of a dataset folder holds the captions, and in which format, unless the user said.

Known file names decide first (Flickr8k.token.txt, results.csv, dataset_flickr8k.json, ...),
then the file's first line: Flickr's `NAME#N<TAB>` tokens, Flickr30k's pipe header, a tab.
"""

from __future__ import annotations

from pathlib import Path

from captioner.data.importing.formats import (
    PIPE_HEADER,
    TOKEN_LINE,
    Source,
    read_coco,
    read_karpathy,
    read_text_source,
)
from captioner.data.importing.textfile import first_line, read_text
from captioner.errors import CaptionerError
from captioner.util.console import say

FORMATS = ("auto", "csv", "tsv", "jsonl", "flickr8k", "flickr30k", "coco", "karpathy")
# In a dataset folder (or one folder down), most specific first.
KNOWN_FILES = (
    ("Flickr8k.token.txt", "flickr8k"),
    ("results_20130124.token", "flickr30k"),
    ("dataset_flickr8k.json", "karpathy"),
    ("dataset_flickr30k.json", "karpathy"),
    ("dataset_coco.json", "karpathy"),
    ("results.csv", "flickr30k"),
    ("captions.txt", "flickr8k"),
    ("captions.csv", "csv"),
    ("captions.tsv", "tsv"),
    ("captions.jsonl", "jsonl"),
)
FLICKR8K_LISTS = {"train": "Flickr_8k.trainImages.txt", "val": "Flickr_8k.devImages.txt",
                  "test": "Flickr_8k.testImages.txt"}


def read_source(path: Path, fmt: str = "auto", encoding: str | None = None) -> Source:
    """Every row of the captions file at `path` (or the one found in the folder `path`)."""
    if fmt not in FORMATS:
        raise CaptionerError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    if path.is_dir():
        path, fmt = find_captions_file(path, fmt)
    elif not path.is_file():
        raise CaptionerError(f"{path}: no such file or folder")
    if fmt == "auto":
        fmt = detect_format(path)
    source = Source(path, fmt)
    if fmt == "coco":
        read_coco(source)
    elif fmt == "karpathy":
        read_karpathy(source)
    else:
        read_text_source(source, encoding, text_kind(path, fmt))
        if fmt == "flickr8k":
            source.splits = flickr8k_splits(path.parent)
            source.split_origin = "Flickr_8k.{train,dev,test}Images.txt" if source.splits else ""
    return source


def find_captions_file(folder: Path, fmt: str) -> tuple[Path, str]:
    """The dataset folder's captions file and format, from the known names."""
    folders = [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]
    found = [(d / name, kind) for name, kind in KNOWN_FILES for d in folders
             if (d / name).is_file() and fmt in ("auto", kind)]
    if not found and fmt in ("auto", "coco"):
        coco = [p for d in folders for p in sorted(d.glob("captions_*.json"))]
        if len(coco) > 1:
            raise CaptionerError(f"{folder}: several COCO caption files ({', '.join(p.name for p in coco)}); "
                                 "pass one of them, or Karpathy's dataset_coco.json")
        found = [(p, "coco") for p in coco]
    if not found:
        names = ", ".join(name for name, kind in KNOWN_FILES if fmt in ("auto", kind))
        raise CaptionerError(f"{folder}: no captions file with a known name ({names or 'captions_*.json'}); "
                             "pass the captions file itself")
    if len(found) > 1:
        others = ", ".join(str(p) for p, _ in found[1:])
        say(f"note: importing {found[0][0]} (also found {others}; pass a file to choose it)")
    return found[0]


def detect_format(path: Path) -> str:
    """The format of one captions file, from its name and first line."""
    name = path.name.lower()
    if name.endswith(".json"):
        return "karpathy" if _looks_karpathy(path) else "coco"
    if name.endswith(".jsonl"):
        return "jsonl"
    first = first_line(path)
    if TOKEN_LINE.fullmatch(first):
        return "flickr30k" if name.startswith("results") else "flickr8k"
    if PIPE_HEADER.match(first):
        return "flickr30k"
    if name.endswith(".tsv") or "\t" in first:
        return "tsv"
    # The widespread CSV repackaging of Flickr8k (image,caption header); else any CSV.
    return "flickr8k" if name == "captions.txt" else "csv"


def _looks_karpathy(path: Path) -> bool:
    # Karpathy's files open with their image list, whose first entry holds its sentences.
    if path.name.startswith("dataset_"):
        return True
    with open(path, "rb") as f:
        head = f.read(1 << 20)
    return b'"sentences"' in head and b'"annotations"' not in head


def text_kind(path: Path, fmt: str) -> str:
    """How to parse a text file of format `fmt`: Flickr's files come as tokens, pipes or CSV."""
    if fmt not in ("flickr8k", "flickr30k"):
        return fmt
    first = first_line(path)
    if TOKEN_LINE.fullmatch(first):
        return "token"
    return "pipe" if fmt == "flickr30k" and "|" in first else "csv"


def flickr8k_splits(folder: Path) -> dict[str, str] | None:
    """image -> split from Flickr8k's own lists beside the captions file (dev is val), if all three are."""
    paths = {split: folder / name for split, name in FLICKR8K_LISTS.items()}
    if not all(p.is_file() for p in paths.values()):
        return None
    splits: dict[str, str] = {}
    for split, path in paths.items():
        for line in read_text(path)[0].split("\n"):
            if line.strip():
                splits.setdefault(line.strip(), split)
    return splits
