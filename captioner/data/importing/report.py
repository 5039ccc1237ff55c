"""The import report: counts of what was read, kept and left out (and why), caption statistics,
vocabulary coverage and split sizes. Saved as DIR/import_report.json (with a schema_version: a
file of another version is a one-line error naming it) and printed as a summary."""

from __future__ import annotations

import shlex
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path, PurePath
from typing import Any

from captioner.data.importing.write import ImportedImage, ordered_splits
from captioner.data.vocab import SPECIALS, Vocabulary
from captioner.errors import CaptionerError
from captioner.util.schema import check_record, read_json

TRAIN_SPLITS = ("train", "restval")  # what `captioner train` builds its vocabulary from by default
REPORT_VERSION = 1


@dataclass
class ImportReport:
    source: str
    format: str
    encoding: str | None
    out: str
    images_listed: int
    images_found: int
    images_missing: int
    images_unreadable: int
    images_verified: bool  # decoded (--verify-images), or only checked for existence and size
    images_kept: int
    captions_read: int
    captions_kept: int
    captions_dropped: dict[str, int]  # reason -> captions left out
    captions_per_image: dict[str, float]
    words_per_caption: dict[str, float]
    vocabulary: dict[str, float]
    splits: dict[str, int]  # split -> images
    split_origin: str
    problems: list[dict] = field(default_factory=list)  # file, line or entry, reason, message
    problems_total: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"schema_version": REPORT_VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, data: Any, where: str | Path) -> ImportReport:
        """The report in `data` (a parsed import_report.json); `where` names the file in errors."""
        check_record(data, where, "import_report.json", REPORT_VERSION, again="import again")
        missing = [f.name for f in fields(cls) if f.name not in data and f.name not in
                   ("problems", "problems_total")]
        if missing:
            raise CaptionerError(f"{where}: not a captioner import_report.json (no {missing[0]!r})")
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    @classmethod
    def read(cls, path: Path) -> ImportReport:
        return cls.from_json(read_json(path, path.read_text()), path)

    def summary(self) -> str:
        """A few lines for the terminal; the last one is the command that trains on the import."""
        dropped = ", ".join(f"{n} {reason}" for reason, n in self.captions_dropped.items()) or "none"
        checked = "decoded" if self.images_verified else "existence and size checked"
        vocab = self.vocabulary
        lines = [
            f"imported {self.source} ({self.format}, {self.encoding or 'JSON'})",
            f"images:   {self.images_listed} listed, {self.images_found} found, {self.images_missing} "
            f"missing, {self.images_unreadable} unreadable ({checked}); {self.images_kept} kept",
            f"captions: {self.captions_read} read, {self.captions_kept} kept; dropped: {dropped}",
            f"per image: {_spread(self.captions_per_image)} captions; "
            f"per caption: {_spread(self.words_per_caption)} words",
            f"vocabulary: {vocab['words']} words seen at least {vocab['min_count']} times in the "
            f"training captions cover {100 * vocab['token_coverage']:.1f}% of their words",
            f"splits ({self.split_origin}): " + ", ".join(f"{s} {n}" for s, n in self.splits.items()),
            f"report: {self.out}/import_report.json",
            f"captioner train data.root={shlex.quote(self.out)} "
            f"name={shlex.quote(PurePath(self.out).name or 'mine')}",
        ]
        return "\n".join(lines)


def _spread(stats: dict[str, float]) -> str:
    return f"min {stats['min']:g}, median {stats['median']:g}, max {stats['max']:g}"


def spread(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"min": 0, "median": 0, "max": 0}
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def vocabulary_stats(images: Sequence[ImportedImage], min_count: int) -> dict[str, float]:
    """The vocabulary `captioner train` would build at `min_count`, and the share of training
    tokens it covers (the rest become <unk>)."""
    tokens = [t for im in images if im.split in TRAIN_SPLITS for t in im.tokens]
    vocab = Vocabulary.build(tokens, min_count=min_count)
    counts = Counter(word for caption in tokens for word in caption)
    total = sum(counts.values())
    covered = sum(n for word, n in counts.items() if word in vocab.index)
    return {"min_count": min_count, "size": len(vocab), "words": len(vocab) - len(SPECIALS),
            "distinct_words": len(counts), "token_coverage": covered / total if total else 0.0}


def split_sizes(images: Sequence[ImportedImage]) -> dict[str, int]:
    counts = Counter(im.split for im in images)
    return {s: counts[s] for s in ordered_splits(counts)}
