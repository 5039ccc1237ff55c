"""Caption metrics: hand-computed BLEU, CIDEr-D sanity, METEOR with and without Java."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import pycocoevalcap
import pytest

from captioner.errors import CaptionerError
from captioner.evaluation.metrics import bleu_scores, cider_d, score_captions

REFERENCES = {1: ["A man riding a horse.", "A person on a horse"],
              2: ["Two dogs play in the snow", "dogs in snow"],
              3: ["a red circle"]}
PREDICTIONS = {1: "a man on a horse", 2: "", 3: "a red circle ||| x"}
# pycocoevalcap's own Meteor().compute_score on these captions after coco-caption tokenisation.
COCO_CAPTION_METEOR = 0.3355116276235779


def test_bleu_matches_hand_computation() -> None:
    references = {"a": [["the", "cat", "is", "on", "the", "mat"]]}
    hypothesis = {"a": ["the", "cat", "sat", "on", "the", "mat"]}
    scores = bleu_scores(references, hypothesis)
    # Clipped unigram matches 5/6, bigram matches 3/5 ("the cat", "on the", "the mat"),
    # no brevity penalty (both 6 tokens).
    assert scores["bleu1"] == pytest.approx(5 / 6)
    assert scores["bleu2"] == pytest.approx(math.sqrt(5 / 6 * 3 / 5))
    assert set(scores) == {"bleu1", "bleu2", "bleu3", "bleu4"}


def test_bleu_without_any_4gram_match_is_zero_and_quiet(recwarn: pytest.WarningsRecorder) -> None:
    scores = bleu_scores({1: [["a", "b", "c", "d"]]}, {1: ["d", "c", "b", "a"]})
    assert scores["bleu1"] == pytest.approx(1.0)
    assert scores["bleu4"] == pytest.approx(0.0)
    assert not recwarn.list


def test_identical_captions_score_perfectly() -> None:
    captions = {1: "a man riding a horse on a beach", 2: "two dogs playing in the snow",
                3: "a plate of food with broccoli"}
    scores = score_captions({k: [c, c] for k, c in captions.items()}, captions, meteor=False)
    for n in range(1, 5):
        assert scores.corpus[f"bleu{n}"] == pytest.approx(1.0)
    # coco-caption's CIDEr-D is x10: a perfect caption scores 10 when every n-gram order
    # has an n-gram that is not in every image's references.
    assert scores.corpus["cider"] == pytest.approx(10.0)
    assert scores.corpus["rouge_l"] == pytest.approx(1.0)
    assert all(s["bleu4_smoothed"] == pytest.approx(1.0) for s in scores.per_image.values())


def test_tokenisation_ignores_case_and_punctuation() -> None:
    references = {1: ["A man's hat, on a table."], 2: ["two dogs in the snow"]}
    scores = score_captions(references, {1: "a man 's hat on a table", 2: "Two dogs in the snow!"},
                            meteor=False)
    assert scores.corpus["bleu4"] == pytest.approx(1.0)


def test_cider_d_keeps_keys_and_rewards_consensus() -> None:
    references = {"x": ["a cat on a mat", "a cat sitting on a mat"], "y": ["a dog in a park"]}
    corpus, per_image = cider_d(references, {"x": "a cat on a mat", "y": "a car in a street"})
    assert set(per_image) == {"x", "y"}
    assert per_image["x"] > per_image["y"] >= 0.0
    assert corpus == pytest.approx((per_image["x"] + per_image["y"]) / 2)


def test_empty_prediction_scores_zero() -> None:
    scores = score_captions(REFERENCES, PREDICTIONS, meteor=False)
    assert scores.per_image[2] == {"bleu4_smoothed": 0.0, "cider": 0.0}


def test_images_without_references_are_an_error() -> None:
    with pytest.raises(CaptionerError, match="no reference captions"):
        score_captions({1: ["a cat"], 2: []}, {1: "a cat", 2: "a dog"}, meteor=False)
    with pytest.raises(CaptionerError, match="no captions"):
        score_captions({}, {}, meteor=False)


def test_meteor_is_skipped_with_a_note_when_java_is_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no java on PATH
    scores = score_captions(REFERENCES, PREDICTIONS)
    assert "meteor" not in scores.corpus
    assert scores.notes == ["METEOR skipped: java not found on PATH"]
    assert "cider" in scores.corpus


def test_a_failing_java_becomes_a_note(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    java = tmp_path / "java"
    java.write_text("#!/bin/sh\necho 'Error: could not reserve heap' >&2\nexit 1\n")
    java.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    scores = score_captions(REFERENCES, PREDICTIONS)
    assert "meteor" not in scores.corpus
    assert len(scores.notes) == 1 and scores.notes[0].startswith("METEOR failed")
    assert "could not reserve heap" in scores.notes[0]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR needs Java (java not on PATH)")
def test_meteor_matches_coco_caption_and_writes_nothing_into_the_package() -> None:
    package = Path(next(iter(pycocoevalcap.__path__)))
    before = _snapshot(package)
    scores = score_captions(REFERENCES, PREDICTIONS)
    assert scores.notes == []
    assert scores.corpus["meteor"] == pytest.approx(COCO_CAPTION_METEOR, abs=1e-9)
    assert _snapshot(package) == before


def _snapshot(folder: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*")
            if "__pycache__" not in p.parts and not os.path.isdir(p)}
