"""The evaluation report: metrics, per-image scores, failure tags, plots and an HTML page.

`write_report` turns captioned images into a folder a person can open in a browser (index.html)
and a program can read (metrics.json, predictions.json in COCO results format,
per_image.jsonl). The folder is self-contained: thumbnails are copied in and every link is
relative, so it can be moved or archived as it is.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from itertools import pairwise
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from captioner.data.tokenize import tokenize
from captioner.errors import CaptionerError
from captioner.evaluation.bootstrap import RESAMPLES, report_entries
from captioner.evaluation.mentions import ObjectIndex
from captioner.evaluation.metrics import METRIC_DEFINITIONS, SCALE, Scores, score_captions
from captioner.evaluation.records import (
    CaptionLength,
    CaptionSummary,
    EvaluationMetrics,
    ImageRecord,
    ImageScores,
    ObjectSummary,
    Prediction,
    WordMap,
    per_image_lines,
)
from captioner.evaluation.report_page import render_page
from captioner.pages.plots import (
    Plot,
    plot_learning_curves,
    plot_score_distribution,
    read_training_log,
)
from captioner.util.atomic import atomic_path, write_json, write_text
from captioner.util.paths import claim_out_dir, seal_out_dir

# A caption is generic when the model gives it to at least this many images and to more than
# twice as many as the human references use it for: in the shapes set "a red circle" is the
# right caption for many images, in COCO no two people write the same sentence that often.
GENERIC_MIN_IMAGES = 3
THUMBNAIL_PX = 320
# Words that legitimately recur in one caption ("a man on a bench with a dog"); a repetition of
# anything else, more often than any reference repeats it, is the decoder looping.
_FUNCTION_WORDS = frozenset(
    "a an the of on in at to with and or is are its his her their while near next top front "
    "side by for from into onto over under some two three other".split()
)
# Failure tags, in the order the page shows them, and what each means.
TAGS = {
    "empty": "the model produced no words",
    "hallucination": "mentions an object that the instances annotations do not list for the image",
    "missed object": "an annotated object of the image goes unmentioned",
    "repetition": "a word repeated back to back, or a content word repeated more often than in "
                  "any reference",
    "generic": f"the same caption for at least {GENERIC_MIN_IMAGES} images, more than twice as "
               "many as the references use it for",
}


# Called with the report folder and the worst and best records; returns each gallery image's
# word maps (files relative to the folder) by image id.
GalleryMaker = Callable[[Path, Sequence[ImageRecord], Sequence[ImageRecord]],
                        Mapping[int, Sequence[WordMap]]]


@dataclass
class _Analysis:
    """What the report finds in one caption: ImageRecord's fields after the scores."""

    hallucinated: list[str]
    missed: list[str]
    mentioned: list[str]
    objects_annotated: bool
    repeated: list[str]
    same_caption_images: int
    tags: list[str] = field(default_factory=list)


@dataclass
class ImageResult:
    """One evaluated image: its file, the model's caption and the human references."""

    image_id: int
    file: Path
    prediction: str
    references: list[str]


# What a report writes into its folder (util/paths.py's mark proves which of them it wrote).
REPORT_FILES = ("metrics.json", "predictions.json", "per_image.jsonl", "index.html",
                "learning_curves.png", "scores.png", "thumbs", "maps")


def write_report(
    out_dir: Path,
    results: Sequence[ImageResult],
    *,
    train_captions: set[str] | frozenset[str] = frozenset(),
    objects: ObjectIndex | None = None,
    metrics_csv: Path | None = None,
    worst: int = 24,
    best: int = 12,
    meteor: bool = True,
    extra: Mapping[str, Any] | None = None,
    bootstrap: int = RESAMPLES,
    seed: int = 0,
    gallery_maps: GalleryMaker | None = None,
) -> EvaluationMetrics:
    """Score `results` and write the report into `out_dir`; returns what metrics.json holds.

    `train_captions` (raw or tokenised) lets the report count novel captions; `objects` enables
    the hallucination analysis; `metrics_csv` is Lightning's CSVLogger log for learning curves;
    `extra` (checkpoint, split, beam size...) is stored under "run". Each metric gets a 95%
    interval from `bootstrap` resamples of the images drawn with `seed` (0: none);
    `gallery_maps` (captioner.evaluation.gallery_maps) adds where the model looked to the gallery.
    """
    out_dir = Path(out_dir)
    _check(results)
    claim_out_dir(out_dir, REPORT_FILES, command="evaluation")
    with ThreadPoolExecutor(max_workers=1) as pool:
        # METEOR's JVM needs seconds to start: whatever does not need the scores runs meanwhile.
        pending = pool.submit(score_captions, {r.image_id: r.references for r in results},
                              {r.image_id: r.prediction for r in results}, meteor=meteor)
        tokens = {c: tokenize(c) for r in results for c in (r.prediction, *r.references)}
        analyses = _judge(results, tokens, objects)
        summary = _summary(results, analyses, tokens, train_captions, objects)
        notes: list[str] = []
        plots = _learning_curves(out_dir, metrics_csv, notes)
        scores = pending.result()
    notes[:0] = scores.notes
    records = [_record(r, scores.per_image[r.image_id], analysis)
               for r, analysis in zip(results, analyses, strict=True)]
    plots.append(_score_distribution(out_dir, results, tokens, scores))
    worst_records, best_records = _galleries(records, worst, best)
    thumbnails = _write_thumbnails(out_dir, results, [*worst_records, *best_records], notes)
    if gallery_maps is not None:
        records = _attach_maps(records, gallery_maps(out_dir, worst_records, best_records))
        worst_records, best_records = _galleries(records, worst, best)
    intervals, resampling = report_entries(records, list(scores.corpus), chair=objects is not None,
                                           resamples=bootstrap, seed=seed, tokens=tokens)
    metrics = EvaluationMetrics(
        metrics=scores.corpus, intervals=intervals, bootstrap=resampling,
        scale=SCALE,
        definitions={k: METRIC_DEFINITIONS[k] for k in [*scores.corpus, "bleu4_smoothed"]},
        summary=summary, notes=notes,
        run={str(k): _plain(v) for k, v in (extra or {}).items()})
    _write_files(out_dir, metrics, results, records,
                 render_page(metrics, worst_records, best_records, plots, thumbnails, TAGS))
    seal_out_dir(out_dir, REPORT_FILES, command="evaluation")
    return metrics


def _galleries(records: list[ImageRecord], worst: int,
               best: int) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """The worst and the best images by CIDEr-D. Disjoint: with fewer images than both ask for,
    each gets its share (the best at most half) rather than the same images shown twice."""
    by_cider = sorted(records, key=lambda r: (r.scores.cider, r.scores.bleu4_smoothed or 0.0,
                                              r.image_id))
    shown_best = min(best, len(by_cider) // 2)
    return by_cider[:min(worst, len(by_cider) - shown_best)], by_cider[::-1][:shown_best]


def _attach_maps(records: list[ImageRecord],
                 maps: Mapping[int, Sequence[WordMap]]) -> list[ImageRecord]:
    """The records, the gallery's with where the model looked, by image id."""
    return [replace(r, maps=list(maps[r.image_id]))
            if r.image_id in maps else r for r in records]


def _write_files(out_dir: Path, metrics: EvaluationMetrics, results: Sequence[ImageResult],
                 records: list[ImageRecord], page: str) -> None:
    """metrics.json, predictions.json, per_image.jsonl and index.html, each atomically."""
    write_json(out_dir / "metrics.json", metrics.to_json())
    write_json(out_dir / "predictions.json",
               [Prediction(r.image_id, r.prediction).to_json() for r in results])
    write_text(out_dir / "per_image.jsonl", per_image_lines(records))
    write_text(out_dir / "index.html", page)


def _plain(value: Any) -> Any:
    """JSON as it is, anything else (a Path, a torch.device) as its string."""
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)


def _check(results: Sequence[ImageResult]) -> None:
    if not results:
        raise CaptionerError("report: no images to report on")
    counts = Counter(r.image_id for r in results)
    duplicated = [image_id for image_id, n in counts.items() if n > 1]
    if duplicated:
        raise CaptionerError(f"report: image id {duplicated[0]} appears more than once")


def _record(result: ImageResult, scores: Mapping[str, float], analysis: _Analysis) -> ImageRecord:
    return ImageRecord(result.image_id, str(result.file), result.prediction,
                       list(result.references), ImageScores(**scores), **vars(analysis))


def _caption_key(text: str) -> str:
    """What makes two captions "the same": case, spacing and punctuation do not."""
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


def _judge(
    results: Sequence[ImageResult], tokens: Mapping[str, list[str]], objects: ObjectIndex | None
) -> list[_Analysis]:
    """Failure tags of each image, with what triggered them (per_image.jsonl fields)."""
    predicted = Counter(_caption_key(r.prediction) for r in results)
    referenced = Counter(key for r in results for key in {_caption_key(c) for c in r.references})
    analyses = []
    for result in results:
        words = tokens[result.prediction]
        key = _caption_key(result.prediction)
        generic = predicted[key] >= GENERIC_MIN_IMAGES and predicted[key] > 2 * referenced[key]
        mentioned, present = _objects(objects, result.image_id, words)
        analysis = _Analysis(
            hallucinated=sorted(mentioned - present) if present is not None else [],
            missed=sorted(present - mentioned) if present is not None else [],
            mentioned=sorted(mentioned),
            objects_annotated=present is not None,
            repeated=_repeated(words, [tokens[c] for c in result.references]),
            same_caption_images=predicted[key],
        )
        flags = (not words, analysis.hallucinated, analysis.missed, analysis.repeated, generic)
        analysis.tags = [tag for tag, flag in zip(TAGS, flags, strict=True) if flag]
        analyses.append(analysis)
    return analyses


def _objects(
    objects: ObjectIndex | None, image_id: int, words: list[str]
) -> tuple[set[str], set[str] | None]:
    """(objects the caption mentions, objects in the image or None when not annotated)."""
    if objects is None:
        return set(), None
    present = objects.objects_in_image(image_id) if objects.covers(image_id) else None
    return objects.objects_in_caption(words), present


def _repeated(words: list[str], references: list[list[str]]) -> list[str]:
    """Words repeated back to back, or content words repeated more than any reference does."""
    most_in_a_reference: Counter[str] = Counter()
    for reference in references:
        most_in_a_reference |= Counter(reference)  # | keeps the larger count
    looping = {w for w, n in Counter(words).items() if n >= 2 and w.isalpha()
               and w not in _FUNCTION_WORDS and n > most_in_a_reference[w]}
    stuttering = {a for a, b in pairwise(words) if a == b and a.isalpha()}
    return sorted(looping | stuttering)


def _summary(
    results: Sequence[ImageResult], analyses: list[_Analysis],
    tokens: Mapping[str, list[str]], train_captions: set[str] | frozenset[str],
    objects: ObjectIndex | None,
) -> CaptionSummary:
    n = len(results)
    keys = [_caption_key(r.prediction) for r in results]
    predicted = [tokens[r.prediction] for r in results]
    referenced = [tokens[c] for r in results for c in r.references]
    lengths = [len(words) for words in predicted]
    train_keys = {_caption_key(c) for c in train_captions}
    return CaptionSummary(
        images=n,
        distinct_captions=len(set(keys)) / n,
        novel_captions=sum(k not in train_keys for k in keys) / n if train_keys else None,
        vocabulary_used=len({w for words in predicted for w in words}),
        reference_vocabulary=len({w for words in referenced for w in words}),
        caption_length=CaptionLength(statistics.fmean(lengths), statistics.median(lengths),
                                     min(lengths), max(lengths)),
        reference_length_mean=statistics.fmean(len(words) for words in referenced),
        tags={tag: sum(tag in a.tags for a in analyses) for tag in TAGS},
        objects=None if objects is None else _chair(analyses, objects.kind),
    )


def _chair(analyses: list[_Analysis], kind: str) -> ObjectSummary:
    """CHAIR (Rohrbach et al. 2018): hallucinated share of object mentions and of captions."""
    annotated = [a for a in analyses if a.objects_annotated]
    mentions = sum(len(a.mentioned) for a in annotated)
    hallucinated = sum(len(a.hallucinated) for a in annotated)
    found = mentions - hallucinated
    present = found + sum(len(a.missed) for a in annotated)
    return ObjectSummary(
        kind=kind,
        images_annotated=len(annotated),
        object_mentions=mentions,
        chair_i=hallucinated / mentions if mentions else None,
        chair_s=(sum(bool(a.hallucinated) for a in annotated) / len(annotated)
                 if annotated else None),
        object_recall=found / present if present else None,
    )


def _learning_curves(out_dir: Path, metrics_csv: Path | None, notes: list[str]) -> list[Plot]:
    if metrics_csv is None:
        notes.append("no training log given: learning curves not plotted")
    elif not Path(metrics_csv).is_file():
        notes.append(f"training log not found: {metrics_csv}: learning curves not plotted")
    elif plot_learning_curves(read_training_log(Path(metrics_csv)),
                              out_dir / "learning_curves.png"):
        return [Plot(
            "learning_curves.png", "Learning curves",
            "Validation loss rising while training loss falls means overfitting; the best "
            "checkpoint is where the monitored validation metric (trainer.monitor) is best, "
            "which for a caption metric can come after the lowest validation loss.")]
    else:
        notes.append(f"training log {metrics_csv} has no loss or val/ columns to plot")
    return []


def _score_distribution(
    out_dir: Path, results: Sequence[ImageResult], tokens: Mapping[str, list[str]],
    scores: Scores[int],
) -> Plot:
    plot_score_distribution(
        [scores.per_image[r.image_id]["cider"] for r in results], scores.corpus["cider"],
        [len(tokens[r.prediction]) for r in results],
        [len(tokens[c]) for r in results for c in r.references],
        out_dir / "scores.png")
    return Plot(
        "scores.png", "Per-image scores and caption lengths",
        "A tall bar at CIDEr-D 0 is captions sharing nothing with their references (see the "
        "worst gallery); predictions much shorter than references point to generic captions.")


def _write_thumbnails(
    out_dir: Path, results: Sequence[ImageResult], records: list[ImageRecord],
    notes: list[str],
) -> dict[int, str]:
    """Small JPEGs in out_dir/thumbs for the gallery: {image_id: path relative to out_dir}."""
    files = {r.image_id: Path(r.file) for r in results}
    thumbnails: dict[int, str] = {}
    unreadable = []
    for image_id in dict.fromkeys(r.image_id for r in records):
        relative = f"thumbs/{image_id}.jpg"
        if write_thumbnail(files[image_id], out_dir / relative):
            thumbnails[image_id] = relative
        else:
            unreadable.append(files[image_id])
    if unreadable:
        notes.append(f"{len(unreadable)} gallery image(s) could not be read, e.g. {unreadable[0]}")
    return thumbnails


def write_thumbnail(source: Path, target: Path) -> bool:
    """A small JPEG of `source` at `target`; False when the image cannot be read."""
    try:
        with Image.open(source) as image:
            # JPEG decodes straight to a reduced scale: a large COCO photo costs little.
            image.draft("RGB", (THUMBNAIL_PX, THUMBNAIL_PX))
            thumbnail = ImageOps.exif_transpose(image).convert("RGB")
    except (OSError, ValueError):
        return False
    thumbnail.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    with atomic_path(target) as tmp:
        thumbnail.save(tmp, format="JPEG", quality=85)
    return True
