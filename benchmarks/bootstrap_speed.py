"""Bootstrap intervals of BLEU-1..4, CIDEr-D and ROUGE-L: the vectorised engine against rescoring.

A COCO-sized test split (5,000 images, 5 references each, captions of 8-14 words from a Zipfian
vocabulary, predictions sharing about half their words with a reference) is scored once with
captioner.evaluation.metrics, then resampled. The engine (captioner/evaluation/bootstrap.py)
builds per-image statistics once and scores every resample as one matrix product; the usual loop
rescores each resample with
nltk's corpus_bleu and pycocoevalcap's Cider (timed on a few resamples, the rest extrapolated).

    python benchmarks/bootstrap_speed.py [--images 5000] [--resamples 1000] [--rescored 3]

(with the package installed, or PYTHONPATH=. from a source checkout)
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

import numpy as np
from machine import describe  # benchmarks/ is on sys.path as a script

from captioner.data.tokenize import tokenize
from captioner.evaluation.bootstrap import (
    image_statistics,
    intervals,
    paired_deltas,
    point_estimates,
    resample_weights,
)
from captioner.evaluation.metrics import bleu_scores, cider_d, score_captions
from captioner.evaluation.records import ImageRecord, ImageScores


def synthetic_split(images: int, seed: int = 0) -> tuple[dict[int, list[str]], dict[int, str]]:
    rng = random.Random(seed)
    vocabulary = [f"w{i}" for i in range(2000)]
    weights = [1 / (rank + 1) for rank in range(len(vocabulary))]  # Zipf: "a", "on", "the"...

    def sentence(length: int) -> list[str]:
        return rng.choices(vocabulary, weights, k=length)

    references = {k: [" ".join(sentence(rng.randint(8, 14))) for _ in range(5)]
                  for k in range(images)}
    predictions = {}
    for k, refs in references.items():
        words = refs[0].split()
        predictions[k] = " ".join(w if rng.random() < 0.5 else sentence(1)[0]
                                  for w in words[:rng.randint(8, 12)])
    return references, predictions


def seconds(work: Callable[[], object], repeats: int) -> float:
    """Median wall time of `repeats` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def rescored_resample(references: dict, predictions: dict, counts: np.ndarray) -> None:
    """One resample rescored the usual way: duplicated images under new keys, idf recomputed."""
    drawn = [k for k, n in enumerate(counts.astype(int)) for _ in range(n)]
    refs = {i: [tokenize(r) for r in references[k]] for i, k in enumerate(drawn)}
    hyps = {i: tokenize(predictions[k]) for i, k in enumerate(drawn)}
    bleu_scores(refs, hyps)
    cider_d({i: [" ".join(r) for r in rs] for i, rs in refs.items()},
            {i: " ".join(h) for i, h in hyps.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--rescored", type=int, default=3, help="resamples rescored the usual way")
    args = parser.parse_args()
    print(describe())
    references, predictions = synthetic_split(args.images)

    start = time.perf_counter()
    scores = score_captions(references, predictions, meteor=False)
    scoring = time.perf_counter() - start
    records = [ImageRecord(k, f"{k}.jpg", predictions[k], references[k],
                           ImageScores(**scores.per_image[k])) for k in predictions]
    tokens = {c: tokenize(c) for r in records for c in (r.prediction, *r.references)}

    start = time.perf_counter()
    stats = image_statistics(records, chair=False)
    statistics_seconds = time.perf_counter() - start
    cached = seconds(lambda: image_statistics(records, chair=False, tokens=tokens), 1)
    resampling = seconds(lambda: intervals(stats, args.resamples), 5)
    paired = seconds(lambda: paired_deltas(stats, stats, args.resamples), 5)
    worst = max(abs(point_estimates(stats)[k] - v) / abs(v) for k, v in scores.corpus.items())

    weights = next(resample_weights(args.images, args.rescored, seed=0))
    rescoring = seconds(lambda: [rescored_resample(references, predictions, w) for w in weights], 1)
    per_rescored = rescoring / args.rescored
    all_rescored = per_rescored * args.resamples

    print(f"{args.images} images, {args.resamples} resamples (BLEU-1..4, CIDEr-D, ROUGE-L)")
    print(f"  scoring once with captioner.evaluation.metrics (no METEOR):  {scoring:7.2f} s")
    print(f"  per-image statistics, tokenising:                 {statistics_seconds:7.2f} s")
    print(f"  per-image statistics, the report's tokens:        {cached:7.2f} s")
    print(f"  all resamples and intervals (median of 5):        {resampling:7.3f} s "
          f"({1e3 * resampling / args.resamples:.3f} ms per resample)")
    print(f"  paired A/B resamples and deltas (median of 5):    {paired:7.3f} s")
    print(f"  total, statistics + intervals:                    {statistics_seconds + resampling:7.2f} s")
    print(f"  rescoring one resample with nltk + pycocoevalcap: {per_rescored:7.2f} s "
          f"(mean of {args.rescored}); {args.resamples} would take ~{all_rescored / 60:.0f} min, "
          f"{all_rescored / (statistics_seconds + resampling):.0f}x the engine's total")
    print(f"  full sample vs captioner.evaluation.metrics: largest relative difference {worst:.1e}")


if __name__ == "__main__":
    main()
