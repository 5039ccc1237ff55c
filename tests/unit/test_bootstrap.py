"""Bootstrap intervals: the full sample reproduces the metrics, and intervals whose value is known."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers.reports import make_fake_set

from captioner.evaluation.bootstrap import (
    image_statistics,
    intervals,
    paired_deltas,
    point_estimates,
    report_entries,
    resample_weights,
    resampled_metrics,
)
from captioner.evaluation.mentions import load_object_index
from captioner.evaluation.metrics import score_captions
from captioner.evaluation.records import ImageRecord, ImageScores
from captioner.evaluation.report import write_report

# An empty caption, punctuation, a hypothesis of 4 tokens between references of 3 and 5 (nltk
# takes the shorter on a tie), one longer than all of its references, no 4-gram match anywhere.
REFERENCES = {1: ["A man riding a horse.", "A person on a horse"],
              2: ["Two dogs play in the snow", "dogs in snow"],
              3: ["a red circle", "a small red circle"],
              4: ["a cat", "a cat on a mat"],
              5: ["the dog runs", "a big dog runs fast"]}
PREDICTIONS = {1: "a man on a horse", 2: "", 3: "a red circle, small", 4: "a cat sitting on a mat here",
               5: "dog the runs big"}
METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "cider", "rouge_l")


def _records(references: dict[int, list[str]], predictions: dict[int, str]) -> list[ImageRecord]:
    scores = score_captions(references, predictions, meteor=False)
    return [ImageRecord(k, f"{k}.jpg", predictions[k], references[k],
                        ImageScores(**scores.per_image[k])) for k in predictions]


def _random_set(images: int, seed: int) -> tuple[dict[int, list[str]], dict[int, str]]:
    rng = random.Random(seed)
    words = "a the man dog cat red on in with riding table horse two of is".split()

    def caption(low: int, high: int) -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(low, high)))

    return ({k: [caption(3, 9) for _ in range(3)] for k in range(images)},
            {k: caption(0, 8) for k in range(images)})


def _scored(values: np.ndarray) -> list[ImageRecord]:
    """Records whose only varying statistic is a given per-image CIDEr-D."""
    return [replace(_DOG, image_id=i, scores=ImageScores(float(v))) for i, v in enumerate(values)]


_DOG = ImageRecord(0, "dog.jpg", "a dog", ["a dog"], ImageScores(1.0))


@pytest.mark.parametrize("data", [(REFERENCES, PREDICTIONS), _random_set(300, 0)],
                         ids=["edge-cases", "random"])
def test_full_sample_reproduces_the_corpus_metrics(data: tuple[dict, dict]) -> None:
    references, predictions = data
    expected = score_captions(references, predictions, meteor=False).corpus
    found = point_estimates(image_statistics(_records(references, predictions), chair=False))
    assert set(found) == set(METRICS)
    for name in METRICS:
        assert found[name] == pytest.approx(expected[name], rel=1e-12, abs=1e-300), name


def test_chair_and_object_recall_are_ratios_of_sums_over_annotated_images() -> None:
    records = [
        replace(_DOG, objects_annotated=True, mentioned=["cat", "dog"], hallucinated=["cat"]),
        replace(_DOG, objects_annotated=True, mentioned=["dog"], hallucinated=[], missed=["ball"]),
        replace(_DOG, objects_annotated=True, mentioned=[], hallucinated=[], missed=["dog", "cat"]),
        replace(_DOG, objects_annotated=False, mentioned=["cow"], hallucinated=[], missed=["hen"]),
    ]
    found = point_estimates(image_statistics(records, chair=True))
    assert found["chair_i"] == pytest.approx(1 / 3) and found["chair_s"] == pytest.approx(1 / 3)
    # Objects named right (dog, dog) over those present (dog, dog, ball, dog, cat): as the report's.
    assert found["object_recall"] == pytest.approx(2 / 5)
    silent = [replace(r, mentioned=[], hallucinated=[]) for r in records]
    assert point_estimates(image_statistics(silent, chair=True))["chair_i"] is None
    assert intervals(image_statistics(silent, chair=True))["chair_i"] is None


def test_weights_are_seeded_resamples_of_every_image() -> None:
    weights = np.concatenate(list(resample_weights(40, 600, seed=3)))
    assert weights.shape == (600, 40) and (weights.sum(axis=1) == 40).all()
    assert weights.mean() == pytest.approx(1.0)
    again = np.concatenate(list(resample_weights(40, 600, seed=3)))
    assert (weights == again).all()
    assert not (weights == np.concatenate(list(resample_weights(40, 600, seed=4)))).all()
    # Resample k does not depend on how many were asked for.
    assert (np.concatenate(list(resample_weights(40, 300, seed=3))) == weights[:300]).all()


def test_interval_of_a_mean_is_the_normal_one() -> None:
    values = np.random.default_rng(0).gamma(2.0, 0.5, size=2000)
    found = intervals(image_statistics(_scored(values), chair=False), resamples=4000)["cider"]
    half = 1.96 * values.std() / np.sqrt(len(values))
    assert found == pytest.approx([values.mean() - half, values.mean() + half], abs=0.1 * half)


def test_identical_runs_differ_by_nothing_and_win_half_the_time() -> None:
    stats = image_statistics(_records(*_random_set(200, 1)), chair=False)
    for name, delta in paired_deltas(stats, stats).items():
        assert delta.a == delta.b and delta.delta == 0.0, name
        assert delta.interval == [0.0, 0.0] and delta.b_wins == 0.5, name


@pytest.mark.slow
def test_a_per_image_shift_gives_an_interval_around_it() -> None:
    rng = np.random.default_rng(1)
    a = rng.gamma(2.0, 0.5, size=2000)  # images vary a lot...
    noise = rng.normal(0.0, 0.1, size=2000)
    b = a + 0.3 + noise - noise.mean()  # ...B beats A on each by 0.3, give or take 0.1
    delta = paired_deltas(image_statistics(_scored(a), chair=False),
                          image_statistics(_scored(b), chair=False))["cider"]
    assert delta.delta == pytest.approx(0.3)
    half = 1.96 * 0.1 / np.sqrt(2000)  # paired: only the noise counts, not the images' spread
    assert delta.interval == pytest.approx([0.3 - half, 0.3 + half], abs=0.15 * half)
    assert delta.b_wins == 1.0
    exact = paired_deltas(image_statistics(_scored(a), chair=False),
                          image_statistics(_scored(a + 0.3), chair=False))["cider"]
    assert exact.interval == pytest.approx([0.3, 0.3])


def test_fewer_hallucinations_win_for_chair() -> None:
    base = replace(_DOG, objects_annotated=True, mentioned=["cat", "dog"])
    worse = [replace(base, hallucinated=["cat"] if i % 2 else []) for i in range(100)]
    better = [replace(base, hallucinated=["cat"] if i % 4 == 1 else []) for i in range(100)]
    deltas = paired_deltas(image_statistics(worse, chair=True), image_statistics(better, chair=True))
    assert deltas["chair_s"].delta == pytest.approx(-0.25) and deltas["chair_s"].b_wins == 1.0
    assert deltas["chair_i"].interval[1] < 0


def test_same_seed_same_intervals() -> None:
    stats = image_statistics(_records(*_random_set(100, 2)), chair=False)
    assert intervals(stats, seed=5) == intervals(stats, seed=5)
    assert intervals(stats, seed=5) != intervals(stats, seed=6)
    assert all(len(v) == 1000 for v in resampled_metrics(stats).values())


def test_the_report_gives_every_metric_an_interval(tmp_path: Path) -> None:
    fake = make_fake_set(tmp_path / "data")
    metrics = write_report(tmp_path / "out", fake.results,
                           objects=load_object_index([fake.instances]), meteor=False).to_json()
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == metrics
    assert list(metrics["intervals"]) == [*metrics["metrics"], "chair_i", "chair_s", "object_recall"]
    for name, (low, high) in metrics["intervals"].items():
        value = metrics["metrics"].get(name, metrics["summary"]["objects"].get(name))
        assert low <= value <= high, name
    assert metrics["bootstrap"]["resamples"] == 1000 and metrics["bootstrap"]["seed"] == 0
    html = (tmp_path / "out" / "index.html").read_text()
    low, high = metrics["intervals"]["cider"]
    assert f"[{low:.3f}, {high:.3f}]" in html and "middle 95% of the score" in html
    off = write_report(tmp_path / "off", fake.results, meteor=False, bootstrap=0)
    assert off.intervals == {} and "95% interval" not in (tmp_path / "off" / "index.html").read_text()


def test_meteor_is_named_but_not_resampled() -> None:
    records = _records(REFERENCES, PREDICTIONS)
    intervals, resampling = report_entries(records, [*METRICS, "meteor"], chair=False)
    assert intervals["meteor"] is None and intervals["cider"] is not None
    assert "meteor" in resampling.not_resampled
