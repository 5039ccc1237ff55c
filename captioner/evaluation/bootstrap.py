"""Bootstrap confidence intervals of the corpus metrics, resampling images.

Every corpus metric the report gives is a function of sums over images of per-image statistics:
BLEU of clipped n-gram matches, hypothesis n-gram counts and lengths (what nltk's corpus_bleu
adds up), CIDEr-D and ROUGE-L of per-image scores (coco-caption's corpus value is their mean),
CHAIR and object recall of object-mention counts. A bootstrap resample of N images is a count
vector w (how often each image was drawn: multinomial(N, 1/N)), and its metric is the same
function of w @ statistics.
R resamples are a matrix W [R, N], so all of them cost one matrix product and no rescoring.

What stays fixed: CIDEr-D's document frequencies and log(N) come from the full set's references,
so each image keeps its full-set CIDEr-D. Rescoring a resample would count a twice-drawn image's
references as two "documents" and move every other image's idf; the interval is that of the mean
per-image CIDEr-D under the full set's idf. METEOR is not resampled: its corpus score comes from
the Java tool's own aggregation of statistics this module does not reproduce.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from nltk.translate.bleu_score import closest_ref_length, modified_precision
from pycocoevalcap.rouge.rouge import Rouge

from captioner.data.tokenize import tokenize
from captioner.evaluation.records import ImageRecord, PairedDelta, Resampling

LEVEL = 0.95
RESAMPLES = 1000
# Lower is better for these; for every other metric higher is better.
LOWER_IS_BETTER = frozenset({"chair_i", "chair_s"})
# Read from the objects the captions mention and miss, as CHAIR; where they are annotated.
OBJECT_METRICS = ("chair_i", "chair_s", "object_recall")
METHOD = (
    "percentile bootstrap over images: {resamples} resamples of the {images} images drawn with "
    "replacement (seed {seed}), every corpus metric recomputed on each; the interval holds the "
    "middle {percent:g}% of them. CIDEr-D keeps the full set's document frequencies"
)
NOT_RESAMPLED = {"meteor": "METEOR's corpus score is the Java tool's own aggregation: not resampled"}

# Columns of the per-image statistics table: sums of these over images give every metric.
_MATCHES = slice(0, 4)  # clipped n-gram matches, n = 1..4 (nltk modified_precision numerators)
_COUNTS = slice(4, 8)  # hypothesis n-grams, at least 1 (its denominators)
_HYP_LEN, _REF_LEN, _CIDER, _ROUGE = 8, 9, 10, 11  # _REF_LEN: closest reference, nltk's tie rule
_ANNOTATED, _MENTIONS, _HALLUCINATED, _HALLUCINATING, _MISSED = 12, 13, 14, 15, 16
_COLUMNS = 17
# nltk's method0 replaces a zero precision by the smallest float before taking its log.
_LOG_TINY = float(np.log(sys.float_info.min))
# Resamples drawn and summed per matrix product: bounds memory (W is CHUNK x N) for big sets,
# and a fixed size keeps resample k the same whatever the total number asked for.
_CHUNK = 250


@dataclass(frozen=True)
class ImageStatistics:
    """Per-image sufficient statistics: one row per image, in the order of the records."""

    values: np.ndarray  # [N, _COLUMNS] float64
    chair: bool  # whether CHAIR is defined (objects were annotated and analysed)

    def __len__(self) -> int:
        return len(self.values)


def image_statistics(
    records: Sequence[ImageRecord], *, chair: bool,
    tokens: Mapping[str, list[str]] | None = None,
) -> ImageStatistics:
    """Statistics of per-image records: prediction, references, scores.cider, and with `chair`
    objects_annotated, mentioned, hallucinated and missed.

    `tokens` maps captions to their tokens where the caller has them already.
    """
    cached = tokens or {}

    def tok(text: str) -> list[str]:
        return cached[text] if text in cached else tokenize(text)

    rouge = Rouge()
    rows = np.array([_row(record, tok, rouge, chair) for record in records], dtype=np.float64)
    return ImageStatistics(rows.reshape(len(records), _COLUMNS), chair)


def _row(record: ImageRecord, tok: Callable[[str], list[str]], rouge: Rouge,
         chair: bool) -> list[float]:
    hypothesis = tok(record.prediction)
    references = [tok(r) for r in record.references]
    precisions = [modified_precision(references, hypothesis, n) for n in range(1, 5)]
    # As metrics.score_captions scores ROUGE-L: space-joined tokens against each reference.
    rouge_l = rouge.calc_score([" ".join(hypothesis)], [" ".join(r) for r in references])
    annotated = chair and record.objects_annotated
    mentions = len(record.mentioned) if annotated else 0
    hallucinated = len(record.hallucinated) if annotated else 0
    missed = len(record.missed) if annotated else 0
    return [*(p.numerator for p in precisions), *(p.denominator for p in precisions),
            len(hypothesis), closest_ref_length(references, len(hypothesis)),
            record.scores.cider, rouge_l,
            annotated, mentions, hallucinated, hallucinated > 0, missed]


def corpus_metrics(sums: np.ndarray, images: int, chair: bool) -> dict[str, np.ndarray]:
    """Every metric from column sums [R, _COLUMNS] of R samples of `images` images each: [R]
    per metric, NaN where a ratio is undefined (a sample without object mentions)."""
    metrics = {f"bleu{n}": _bleu(sums, n) for n in range(1, 5)}
    metrics["cider"] = sums[:, _CIDER] / images
    metrics["rouge_l"] = sums[:, _ROUGE] / images
    if chair:
        with np.errstate(invalid="ignore", divide="ignore"):
            metrics["chair_i"] = sums[:, _HALLUCINATED] / sums[:, _MENTIONS]
            metrics["chair_s"] = sums[:, _HALLUCINATING] / sums[:, _ANNOTATED]
            found = sums[:, _MENTIONS] - sums[:, _HALLUCINATED]
            metrics["object_recall"] = found / (found + sums[:, _MISSED])
    return metrics


def _bleu(sums: np.ndarray, n: int) -> np.ndarray:
    """nltk's corpus_bleu with uniform weights 1/n and no smoothing (method0)."""
    matches, counts = sums[:, _MATCHES][:, :n], sums[:, _COUNTS][:, :n]
    with np.errstate(divide="ignore"):
        log_precision = np.where(matches > 0, np.log(matches / counts), _LOG_TINY)
    hyp, ref = sums[:, _HYP_LEN], sums[:, _REF_LEN]
    with np.errstate(divide="ignore", over="ignore"):
        brevity = np.where(hyp > ref, 1.0, np.where(hyp == 0, 0.0, np.exp(1 - ref / hyp)))
    score = brevity * np.exp((log_precision / n).sum(axis=1))
    return np.where(sums[:, _MATCHES.start] > 0, score, 0.0)  # no unigram match: nltk says 0


def point_estimates(stats: ImageStatistics) -> dict[str, float | None]:
    """The metrics of the full set (None where undefined), as metrics.py and the report give them."""
    sums = stats.values.sum(axis=0, keepdims=True)
    return {k: _number(v[0]) for k, v in corpus_metrics(sums, len(stats), stats.chair).items()}


def resample_weights(images: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Count matrices W [r, images] of `resamples` bootstrap resamples, up to _CHUNK rows each.

    Each row counts `images` uniform draws of an image index, a multinomial(images, 1/images)
    vector; the generator is numpy's PCG64 seeded with `seed`.
    """
    rng = np.random.default_rng(seed)
    for start in range(0, resamples, _CHUNK):
        rows = min(_CHUNK, resamples - start)
        picks = rng.integers(0, images, size=(rows, images))
        picks += np.arange(rows)[:, None] * images  # row r counts into bins r*images..
        counts = np.bincount(picks.ravel(), minlength=rows * images)
        yield counts.reshape(rows, images).astype(np.float64)


def resampled_metrics(stats: ImageStatistics, resamples: int = RESAMPLES,
                      seed: int = 0) -> dict[str, np.ndarray]:
    """Each metric on every resample: name -> [resamples]."""
    chunks = [corpus_metrics(w @ stats.values, len(stats), stats.chair)
              for w in resample_weights(len(stats), resamples, seed)]
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


def intervals(stats: ImageStatistics, resamples: int = RESAMPLES, seed: int = 0,
              level: float = LEVEL) -> dict[str, list[float] | None]:
    """Percentile bootstrap interval [low, high] of each metric (None where undefined)."""
    return {k: percentile_interval(v, level)
            for k, v in resampled_metrics(stats, resamples, seed).items()}


def percentile_interval(values: np.ndarray, level: float = LEVEL) -> list[float] | None:
    """The middle `level` of the finite values (resamples where a ratio is undefined left out)."""
    finite = values[np.isfinite(values)]
    if not len(finite):
        return None
    tail = (1 - level) / 2
    return [float(q) for q in np.quantile(finite, [tail, 1 - tail])]


def paired_deltas(a: ImageStatistics, b: ImageStatistics, resamples: int = RESAMPLES,
                  seed: int = 0, level: float = LEVEL) -> dict[str, PairedDelta]:
    """B - A for every metric, each resample drawing the same images for A and B.

    Rows of `a` and `b` must be the same images in the same order.
    """
    if len(a) != len(b) or a.chair != b.chair:
        raise ValueError("paired statistics must cover the same images and metrics")
    both = np.hstack([a.values, b.values])
    chunks = []
    for w in resample_weights(len(a), resamples, seed):
        sums = w @ both  # one product for A's and B's columns: the same resample for both
        chunks.append((corpus_metrics(sums[:, :_COLUMNS], len(a), a.chair),
                       corpus_metrics(sums[:, _COLUMNS:], len(b), b.chair)))
    full_a, full_b = point_estimates(a), point_estimates(b)
    deltas = {}
    for name in full_a:
        ra = np.concatenate([c[0][name] for c in chunks])
        rb = np.concatenate([c[1][name] for c in chunks])
        va, vb = full_a[name], full_b[name]
        deltas[name] = PairedDelta(
            va, vb, None if va is None or vb is None else vb - va,
            percentile_interval(rb - ra, level), _b_wins(ra, rb, name in LOWER_IS_BETTER))
    return deltas


def _b_wins(a: np.ndarray, b: np.ndarray, lower_is_better: bool) -> float | None:
    defined = np.isfinite(a) & np.isfinite(b)
    if not defined.any():
        return None
    a, b = a[defined], b[defined]
    better = b < a if lower_is_better else b > a
    return float((better.sum() + 0.5 * (a == b).sum()) / len(a))


def _number(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def report_entries(
    records: Sequence[ImageRecord], metric_names: Sequence[str], *, chair: bool,
    resamples: int = RESAMPLES, seed: int = 0, tokens: Mapping[str, list[str]] | None = None,
) -> tuple[dict[str, list[float] | None], Resampling]:
    """metrics.json's "intervals" (a key per metric in `metric_names`, then CHAIR's and object
    recall's; null for METEOR) and "bootstrap" (how they were drawn); no intervals when
    `resamples` is 0."""
    if resamples == 0:
        return {}, Resampling(0, "switched off")
    found = intervals(image_statistics(records, chair=chair, tokens=tokens), resamples, seed)
    names = [*metric_names, *(OBJECT_METRICS if chair else ())]
    method = METHOD.format(resamples=resamples, images=len(records), seed=seed,
                           percent=100 * LEVEL)
    return ({name: found.get(name) for name in names},
            Resampling(resamples, method, seed, LEVEL,
                       not_resampled={k: v for k, v in NOT_RESAMPLED.items() if k in metric_names}))
