"""`captioner diff A B`: two evaluations of the same images, metric by metric and image by image.

A and B are evaluation folders (what `captioner evaluate` writes) or checkpoints, which are
evaluated first on one split. Both must have scored the same images against the same references;
then every metric's B - A gets a paired bootstrap interval (each resample draws the same images
for A and B, captioner/evaluation/bootstrap.py), the images whose CIDEr-D moved most are set side by side,
and the failure tags that appeared or disappeared are listed. Results: diff.json and index.html.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from captioner.errors import CaptionerError
from captioner.evaluation.bootstrap import (
    LEVEL,
    LOWER_IS_BETTER,
    METHOD,
    NOT_RESAMPLED,
    RESAMPLES,
    image_statistics,
    paired_deltas,
)
from captioner.evaluation.diff_page import render_diff_page
from captioner.evaluation.records import (
    DiffResult,
    DiffSide,
    EvaluationMetrics,
    ImageRecord,
    MovedImage,
    PairedDelta,
    Resampling,
    SideCaption,
    TagChange,
    read_per_image,
)
from captioner.evaluation.report import REPORT_FILES, TAGS, write_thumbnail
from captioner.util.atomic import write_json, write_text
from captioner.util.console import say
from captioner.util.paths import check_out_dir, claim_out_dir, seal_out_dir

SHOW = 12
_WRITES = ("diff.json", "index.html", "thumbs")


@dataclass(frozen=True)
class Evaluation:
    """One evaluation folder: its metrics.json and its per-image records, by image id."""

    folder: Path
    metrics: EvaluationMetrics
    records: list[ImageRecord]  # sorted by image id

    def describe(self) -> str:
        return f"split {self.metrics.run.get('split', '?')}, {len(self.records)} images"


def load_evaluation(folder: Path) -> Evaluation:
    """Read an evaluation folder; a missing or malformed file is a one-line error naming it."""
    folder = Path(folder)
    for name in ("metrics.json", "per_image.jsonl"):
        if not (folder / name).is_file():
            raise CaptionerError(f"{folder}: not an evaluation folder (no {name}); "
                                 "run `captioner evaluate` first")
    metrics = EvaluationMetrics.read(folder / "metrics.json")
    path = folder / "per_image.jsonl"
    records = read_per_image(path)
    if not records:
        raise CaptionerError(f"{path}: no images")
    twice = [i for i, n in Counter(r.image_id for r in records).items() if n > 1]
    if twice:
        raise CaptionerError(f"{path}: image {twice[0]} appears twice")
    return Evaluation(folder, metrics, sorted(records, key=lambda r: r.image_id))


def check_comparable(a: Evaluation, b: Evaluation) -> None:
    """Refuse two evaluations that did not score the same images against the same references."""
    ids_a = {r.image_id for r in a.records}
    ids_b = {r.image_id for r in b.records}
    if ids_a != ids_b:
        example = min(ids_a ^ ids_b)
        raise CaptionerError(
            f"cannot diff {a.folder} and {b.folder}: not scored on the same images (A: "
            f"{a.describe()}; B: {b.describe()}; image {example} is only in "
            f"{'A' if example in ids_a else 'B'}); evaluate both on the same split and --limit")
    differing = [ra.image_id for ra, rb in zip(a.records, b.records)
                 if sorted(ra.references) != sorted(rb.references)]
    if differing:
        raise CaptionerError(
            f"cannot diff {a.folder} and {b.folder}: {len(differing)} image(s) have other "
            f"references in B than in A, e.g. image {differing[0]}; evaluate both on one dataset")


def diff(a: Evaluation, b: Evaluation, *, resamples: int = RESAMPLES, seed: int = 0,
         show: int = SHOW) -> DiffResult:
    """What diff.json holds: metrics with paired intervals, moved images, tag changes."""
    check_comparable(a, b)
    chair = a.metrics.chair and b.metrics.chair
    deltas = paired_deltas(image_statistics(a.records, chair=chair),
                           image_statistics(b.records, chair=chair), resamples, seed)
    metrics = dict(deltas)
    notes = ["CHAIR_i and CHAIR_s: lower is better; B wins a resample where it hallucinates less; "
             "object recall (annotated objects the caption names): higher is better"] if chair else []
    if "meteor" in a.metrics.metrics and "meteor" in b.metrics.metrics:
        va, vb = a.metrics.metrics["meteor"], b.metrics.metrics["meteor"]
        metrics = _insert_before_chair(metrics, "meteor", PairedDelta(va, vb, vb - va, None, None))
        notes.append(NOT_RESAMPLED["meteor"])
    images = len(a.records)
    b_better, b_worse = _moved(a, b, show)
    return DiffResult(
        _side(a), _side(b), images,
        Resampling(resamples, METHOD.format(resamples=resamples, images=images, seed=seed,
                                            percent=100 * LEVEL)
                   + "; A and B are scored on the same resamples", seed, LEVEL, paired=True,
                   ties="a resample where A and B score the same counts one half to b_wins"),
        metrics, b_better, b_worse, _tag_changes(a, b), notes)


def _side(evaluation: Evaluation) -> DiffSide:
    return DiffSide(str(evaluation.folder.resolve()), evaluation.metrics.run)


def _insert_before_chair(metrics: dict[str, PairedDelta], name: str,
                         value: PairedDelta) -> dict[str, PairedDelta]:
    """The order of the report's headline table: corpus metrics, METEOR, then CHAIR."""
    items = list(metrics.items())
    at = next((i for i, (k, _) in enumerate(items) if k in LOWER_IS_BETTER), len(items))
    return dict([*items[:at], (name, value), *items[at:]])


def _moved(a: Evaluation, b: Evaluation, show: int) -> tuple[list[MovedImage], list[MovedImage]]:
    """The `show` images whose per-image CIDEr-D rose most from A to B, and fell most."""
    pairs = [(rb.scores.cider - ra.scores.cider, ra, rb) for ra, rb in zip(a.records, b.records)]
    up = sorted((p for p in pairs if p[0] > 0), key=lambda p: (-p[0], p[1].image_id))
    down = sorted((p for p in pairs if p[0] < 0), key=lambda p: (p[0], p[1].image_id))
    return [_pair(*p) for p in up[:show]], [_pair(*p) for p in down[:show]]


def _pair(delta: float, ra: ImageRecord, rb: ImageRecord) -> MovedImage:
    return MovedImage(ra.image_id, ra.file, ra.references, delta, SideCaption.of(ra),
                      SideCaption.of(rb))


def _tag_changes(a: Evaluation, b: Evaluation) -> dict[str, TagChange]:
    """Per failure tag: images carrying it in A and in B, and which gained or lost it."""
    seen = {t for e in (a, b) for r in e.records for t in r.tags}
    changes = {}
    for tag in [*TAGS, *sorted(seen - set(TAGS))]:  # tags of another version go last
        in_a = {r.image_id for r in a.records if tag in r.tags}
        in_b = {r.image_id for r in b.records if tag in r.tags}
        changes[tag] = TagChange(len(in_a), len(in_b), sorted(in_b - in_a), sorted(in_a - in_b))
    return changes


def write_diff(out_dir: Path, result: DiffResult) -> Path:
    """diff.json, thumbnails of the moved images and index.html in `out_dir`; returns the page."""
    out_dir = Path(out_dir)
    claim_out_dir(out_dir, _WRITES, command="diff")
    thumbnails: dict[int, str] = {}
    for pair in [*result.b_better, *result.b_worse]:
        relative = f"thumbs/{pair.image_id}.jpg"
        if write_thumbnail(Path(pair.file), out_dir / relative):
            thumbnails[pair.image_id] = relative
    write_json(out_dir / "diff.json", result.to_json())
    write_text(out_dir / "index.html", render_diff_page(result, thumbnails, TAGS))
    seal_out_dir(out_dir, _WRITES, command="diff")
    return out_dir / "index.html"


def evaluation_of(path: Path, side: str, *, out_dir: Path | None, split: str | None,
                  limit: int | None, device: str) -> Evaluation:
    """An evaluation folder as it is; a checkpoint evaluated into out_dir/<side> first."""
    path = Path(path)
    if path.is_dir():
        return load_evaluation(path)
    if not path.is_file():
        raise CaptionerError(f"{side.upper()}: {path} is neither an evaluation folder nor a checkpoint")
    if out_dir is None:
        raise CaptionerError(f"{side.upper()}: {path} is a checkpoint: give --out DIR to evaluate "
                             f"it into DIR/{side}")
    from captioner.evaluation.evaluate import evaluate  # torch and the model: only for checkpoints

    say(f"evaluating {side.upper()} ({path}) on split {split or 'of its config'}")
    # No Grad-CAM maps: the diff's page shows captions, not where the model looked.
    evaluate(path, split=split, out_dir=out_dir / side, limit=limit, device=device, explain=False)
    return load_evaluation(out_dir / side)


def diff_paths(a: Path, b: Path, *, out_dir: Path | None = None, split: str | None = None,
               limit: int | None = None, device: str = "auto", resamples: int = RESAMPLES,
               seed: int = 0, show: int = SHOW) -> DiffResult:
    """`captioner diff`: A and B (folders or checkpoints) compared; written to out_dir if given.

    A checkpoint is evaluated on `split`, else on the split of the other side's folder, else
    (two checkpoints) on A's configured split, so that both sides score the same images.
    """
    if resamples < 1000:
        raise CaptionerError(f"--resamples {resamples}: use at least 1000")
    paths = {"a": Path(a), "b": Path(b)}
    if out_dir is not None:  # checked before any evaluation runs
        check_out_dir(out_dir, _WRITES, command="diff")
        for side in (side for side, p in paths.items() if not p.is_dir()):  # evaluated into out_dir/side
            check_out_dir(Path(out_dir) / side, REPORT_FILES, command="evaluation")
    # A folder fixes the split for a checkpoint on the other side, so it is read first.
    order = ["b", "a"] if paths["b"].is_dir() and not paths["a"].is_dir() else ["a", "b"]
    found: dict[str, Evaluation] = {}
    for side in order:
        found[side] = evaluation_of(paths[side], side, out_dir=out_dir, split=split, limit=limit,
                                    device=device)
        split = split or found[side].metrics.run.get("split")
    result = diff(found["a"], found["b"], resamples=resamples, seed=seed, show=show)
    if out_dir is not None:
        write_diff(out_dir, result)
    return result
