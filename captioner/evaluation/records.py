"""What an evaluation folder holds, as typed records: per_image.jsonl and metrics.json.

The report (report.py) builds these and writes `to_json()`; the bootstrap (bootstrap.py), the
diff (diff.py) and the pages read them back through `from_json`, which checks the fields and
the `schema_version`. A file written before the version existed (no `schema_version`) is read as
version 1, the fields it has being those of version 1; a file of any other version is a one-line
CaptionerError naming it.

predictions.json is the one file without a version of its own: it is COCO's results format (a
list of {"image_id", "caption"}), which the COCO evaluation server and pycocotools' `loadRes`
read as it is, so it cannot carry another field; `Prediction` is its definition, and the
metrics.json beside it carries the folder's schema version.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from captioner.errors import CaptionerError
from captioner.util.schema import check_record, check_version, fields_of, read_json

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ImageScores:
    """An image's own scores: CIDEr-D against its references (full-set idf), smoothed BLEU-4."""

    cider: float
    bleu4_smoothed: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"bleu4_smoothed": self.bleu4_smoothed, "cider": self.cider}


@dataclass(frozen=True)
class WordMap:
    """A gallery card's Grad-CAM overlay of one word: a file relative to the report folder."""

    word: str
    file: str
    empty: bool = False  # the map is all zeros: the overlay shows nothing

    def to_json(self) -> dict[str, Any]:
        return {"word": self.word, "file": self.file, "empty": self.empty}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WordMap:
        return cls(str(data["word"]), str(data["file"]), bool(data.get("empty", False)))


@dataclass(frozen=True)
class ImageRecord:
    """One line of per_image.jsonl: an image, its caption and references, its scores, the objects
    it mentions against those annotated, and its failure tags with what triggered them."""

    image_id: int
    file: str
    prediction: str
    references: list[str]
    scores: ImageScores
    hallucinated: list[str] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)
    mentioned: list[str] = field(default_factory=list)
    objects_annotated: bool = False
    repeated: list[str] = field(default_factory=list)
    same_caption_images: int = 1
    tags: list[str] = field(default_factory=list)
    maps: list[WordMap] = field(default_factory=list)  # the gallery's cards only

    def to_json(self) -> dict[str, Any]:
        data = {"schema_version": SCHEMA_VERSION, "image_id": self.image_id, "file": self.file,
                "prediction": self.prediction, "references": list(self.references),
                "scores": self.scores.to_json(), "hallucinated": list(self.hallucinated),
                "missed": list(self.missed), "mentioned": list(self.mentioned),
                "objects_annotated": self.objects_annotated, "repeated": list(self.repeated),
                "same_caption_images": self.same_caption_images, "tags": list(self.tags)}
        if self.maps:
            data["maps"] = [m.to_json() for m in self.maps]
        return data

    @classmethod
    def from_json(cls, data: Any, where: str) -> ImageRecord:
        """The record in `data` (one parsed line); `where` ("file:line") names it in errors."""
        missing = [k for k in _REQUIRED if not isinstance(data, dict) or k not in data]
        if missing:
            raise CaptionerError(f"{where}: not a per-image record (no {missing[0]!r})")
        check_version(data, where, "a per-image record", SCHEMA_VERSION, again="evaluate again")
        if not isinstance(data["image_id"], int):
            raise CaptionerError(f"{where}: image_id {data['image_id']!r} is not a number")
        scores = data["scores"]
        if not isinstance(scores, dict) or "cider" not in scores:
            raise CaptionerError(f"{where}: no per-image CIDEr-D under 'scores'")
        if not data["references"]:
            raise CaptionerError(f"{where}: image {data['image_id']} has no references")
        return cls(
            data["image_id"], str(data["file"]), data["prediction"], list(data["references"]),
            ImageScores(scores["cider"], scores.get("bleu4_smoothed")),
            list(data["hallucinated"]), list(data["missed"]), list(data["mentioned"]),
            bool(data["objects_annotated"]), list(data["repeated"]),
            data["same_caption_images"], list(data["tags"]),
            [WordMap.from_json(m) for m in data.get("maps", [])])


# Every field a per_image.jsonl line must hold (maps only the gallery's cards have).
_REQUIRED = tuple(f.name for f in fields(ImageRecord) if f.name != "maps")


@dataclass(frozen=True)
class Prediction:
    """One entry of predictions.json, in COCO's results format."""

    image_id: int
    caption: str

    def to_json(self) -> dict[str, Any]:
        return {"image_id": self.image_id, "caption": self.caption}

    @classmethod
    def from_json(cls, data: Any, where: str) -> Prediction:
        with fields_of(where, "prediction"):
            if not isinstance(data["image_id"], int) or not isinstance(data["caption"], str):
                raise TypeError("image_id must be a whole number and caption a string")
            return cls(data["image_id"], data["caption"])


def read_predictions(path: Path) -> list[Prediction]:
    """Every entry of a predictions.json, in file order."""
    data = read_json(path, path.read_text())
    if not isinstance(data, list):
        raise CaptionerError(f"{path}: not COCO results (a list of image_id and caption)")
    return [Prediction.from_json(entry, f"{path}[{n}]") for n, entry in enumerate(data)]


def per_image_lines(records: list[ImageRecord]) -> str:
    """per_image.jsonl's text: one JSON record a line."""
    return "".join(json.dumps(r.to_json()) + "\n" for r in records)


def read_per_image(path: Path) -> list[ImageRecord]:
    """Every record of a per_image.jsonl, in file order (blank lines skipped)."""
    return [ImageRecord.from_json(read_json(f"{path}:{number}", line), f"{path}:{number}")
            for number, line in enumerate(path.read_text().splitlines(), start=1) if line.strip()]


@dataclass(frozen=True)
class Resampling:
    """How the bootstrap intervals were drawn (metrics.json's and diff.json's "bootstrap"); the
    fields a file does not have (no seed when switched off, `paired` and `ties` in a diff
    only) are None and left out of the JSON."""

    resamples: int  # 0: switched off
    method: str
    seed: int | None = None
    level: float | None = None
    paired: bool | None = None  # A and B scored on the same resamples
    ties: str | None = None  # how a resample where A and B score the same counts
    not_resampled: dict[str, str] | None = None  # metric -> why it has no interval

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Resampling:
        """KeyError or TypeError where a field is missing or unknown."""
        return cls(**data)


@dataclass(frozen=True)
class CaptionLength:
    """Tokens per predicted caption."""

    mean: float
    median: float
    min: int
    max: int


@dataclass(frozen=True)
class ObjectSummary:
    """CHAIR (Rohrbach et al. 2018) over the images whose objects are annotated: the
    hallucinated share of object mentions (chair_i) and of captions (chair_s), and the share of
    annotated objects mentioned; None where there is nothing to divide by."""

    kind: str  # the object vocabulary: "shapes" or "coco"
    images_annotated: int
    object_mentions: int
    chair_i: float | None
    chair_s: float | None
    object_recall: float | None


@dataclass(frozen=True)
class CaptionSummary:
    """metrics.json's "summary": the captions at a glance, failure tags counted, and with
    instances files the objects (absent from the JSON without them)."""

    images: int
    distinct_captions: float  # share of images whose caption no other image got
    novel_captions: float | None  # share not among the training captions; None: not given them
    vocabulary_used: int
    reference_vocabulary: int
    caption_length: CaptionLength
    reference_length_mean: float
    tags: dict[str, int]  # failure tag -> images carrying it
    objects: ObjectSummary | None = None

    def to_json(self) -> dict[str, Any]:
        data = {"images": self.images, "distinct_captions": self.distinct_captions,
                "novel_captions": self.novel_captions, "vocabulary_used": self.vocabulary_used,
                "reference_vocabulary": self.reference_vocabulary,
                "caption_length": asdict(self.caption_length),
                "reference_length_mean": self.reference_length_mean, "tags": self.tags}
        if self.objects is not None:
            data["objects"] = asdict(self.objects)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CaptionSummary:
        """KeyError or TypeError where a field is missing or malformed."""
        objects = data.get("objects")
        return cls(data["images"], data["distinct_captions"], data["novel_captions"],
                   data["vocabulary_used"], data["reference_vocabulary"],
                   CaptionLength(**data["caption_length"]), data["reference_length_mean"],
                   dict(data["tags"]), None if objects is None else ObjectSummary(**objects))


_NOT_DRAWN = {"resamples": 0, "method": "not drawn (a report from before bootstrap intervals)"}


@dataclass(frozen=True)
class EvaluationMetrics:
    """metrics.json: corpus metrics with their bootstrap intervals, how the intervals were drawn,
    the scale and definitions of the metrics, the caption summary, notes and the run's settings."""

    metrics: dict[str, float]
    intervals: dict[str, list[float] | None]
    bootstrap: Resampling
    scale: str
    definitions: dict[str, str]
    summary: CaptionSummary
    notes: list[str]
    run: dict[str, Any]

    @property
    def chair(self) -> bool:
        """Whether objects were analysed (the summary then has CHAIR)."""
        return self.summary.objects is not None

    def to_json(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "metrics": self.metrics,
                "intervals": self.intervals, "bootstrap": self.bootstrap.to_json(),
                "scale": self.scale,
                "definitions": self.definitions, "summary": self.summary.to_json(), "notes": self.notes,
                "run": self.run}

    @classmethod
    def from_json(cls, data: Any, where: str | Path) -> EvaluationMetrics:
        """The metrics in `data` (a parsed metrics.json); `where` names the file in errors."""
        if not isinstance(data, dict) or not all(isinstance(data.get(k), dict)
                                                 for k in ("metrics", "summary")):
            raise CaptionerError(f"{where}: not a captioner metrics.json (no 'metrics' or 'summary')")
        check_version(data, where, "metrics.json", SCHEMA_VERSION, again="evaluate again")
        try:
            summary = CaptionSummary.from_json(data["summary"])
        except (KeyError, TypeError) as err:
            raise CaptionerError(f"{where}: not a captioner metrics.json (its summary lacks or "
                                 f"mistypes {err})") from err
        try:  # a report from before the intervals has no "bootstrap"
            resampling = Resampling.from_json(data.get("bootstrap", _NOT_DRAWN))
        except TypeError as err:
            raise CaptionerError(f"{where}: not a captioner metrics.json (bootstrap: {err})") from err
        return cls(data["metrics"], data.get("intervals", {}), resampling,
                   data.get("scale", ""), data.get("definitions", {}), summary,
                   list(data.get("notes", [])), dict(data.get("run", {})))

    @classmethod
    def read(cls, path: Path) -> EvaluationMetrics:
        return cls.from_json(read_json(path, path.read_text()), path)


@dataclass(frozen=True)
class PairedDelta:
    """One metric of A and B on the same images, and B - A over paired resamples."""

    a: float | None
    b: float | None
    delta: float | None
    interval: list[float] | None  # percentile interval of B - A; None: not resampled
    b_wins: float | None  # share of resamples where B is better; a tie counts one half

    def to_json(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "delta": self.delta, "interval": self.interval,
                "b_wins": self.b_wins}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PairedDelta:
        return cls(data["a"], data["b"], data["delta"], data["interval"], data["b_wins"])


@dataclass(frozen=True)
class DiffSide:
    """An evaluation the diff compares: its folder and the run settings its metrics.json gives."""

    folder: str
    run: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"folder": self.folder, "run": self.run}


@dataclass(frozen=True)
class SideCaption:
    """A moved image as one side captioned it: the caption, its CIDEr-D, its failure tags."""

    cider: float
    prediction: str
    tags: list[str]
    hallucinated: list[str]
    missed: list[str]
    repeated: list[str]
    same_caption_images: int

    @classmethod
    def of(cls, record: ImageRecord) -> SideCaption:
        return cls(record.scores.cider, record.prediction, record.tags, record.hallucinated,
                   record.missed, record.repeated, record.same_caption_images)

    def to_json(self) -> dict[str, Any]:
        return {"cider": self.cider, "prediction": self.prediction, "tags": self.tags,
                "hallucinated": self.hallucinated, "missed": self.missed,
                "repeated": self.repeated, "same_caption_images": self.same_caption_images}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SideCaption:
        return cls(data["cider"], data["prediction"], data["tags"], data["hallucinated"],
                   data["missed"], data["repeated"], data["same_caption_images"])


@dataclass(frozen=True)
class MovedImage:
    """An image whose per-image CIDEr-D moved from A to B, with both captions."""

    image_id: int
    file: str
    references: list[str]
    cider_delta: float
    a: SideCaption
    b: SideCaption

    def to_json(self) -> dict[str, Any]:
        return {"image_id": self.image_id, "file": self.file, "references": self.references,
                "cider_delta": self.cider_delta, "a": self.a.to_json(), "b": self.b.to_json()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MovedImage:
        return cls(data["image_id"], data["file"], data["references"], data["cider_delta"],
                   SideCaption.from_json(data["a"]), SideCaption.from_json(data["b"]))


@dataclass(frozen=True)
class TagChange:
    """One failure tag: images carrying it in A and in B, and which gained or lost it."""

    a: int
    b: int
    appeared: list[int]
    disappeared: list[int]

    def to_json(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "appeared": self.appeared,
                "disappeared": self.disappeared}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TagChange:
        return cls(data["a"], data["b"], data["appeared"], data["disappeared"])


@dataclass(frozen=True)
class DiffResult:
    """diff.json: two evaluations of the same images, metric by metric (paired bootstrap), the
    images that moved most each way, and the failure tags that appeared or disappeared."""

    a: DiffSide
    b: DiffSide
    images: int
    bootstrap: Resampling
    metrics: dict[str, PairedDelta]
    b_better: list[MovedImage]
    b_worse: list[MovedImage]
    tags: dict[str, TagChange]
    notes: list[str]

    def to_json(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "a": self.a.to_json(), "b": self.b.to_json(),
                "images": self.images, "bootstrap": self.bootstrap.to_json(),
                "metrics": {name: m.to_json() for name, m in self.metrics.items()},
                "moved": {"b_better": [m.to_json() for m in self.b_better],
                          "b_worse": [m.to_json() for m in self.b_worse]},
                "tags": {tag: c.to_json() for tag, c in self.tags.items()}, "notes": self.notes}

    @classmethod
    def from_json(cls, data: Any, where: str | Path) -> DiffResult:
        """The diff in `data` (a parsed diff.json); `where` names the file in errors."""
        check_record(data, where, "diff.json", SCHEMA_VERSION, again="run `captioner diff` again")
        with fields_of(where, "diff.json"):
            return cls(
                DiffSide(**data["a"]), DiffSide(**data["b"]), data["images"],
                Resampling.from_json(data["bootstrap"]),
                {k: PairedDelta.from_json(m) for k, m in data["metrics"].items()},
                [MovedImage.from_json(m) for m in data["moved"]["b_better"]],
                [MovedImage.from_json(m) for m in data["moved"]["b_worse"]],
                {k: TagChange.from_json(c) for k, c in data["tags"].items()}, data["notes"])

    @classmethod
    def read(cls, path: Path) -> DiffResult:
        return cls.from_json(read_json(path, path.read_text()), path)
