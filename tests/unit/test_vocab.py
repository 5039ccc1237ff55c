"""Tokenisation (coco-caption compatible) and the vocabulary."""

from __future__ import annotations

import pytest

from captioner.data.tokenize import tokenize
from captioner.data.vocab import SPECIALS, Vocabulary


@pytest.mark.parametrize(("text", "tokens"), [
    ("A man's hat.", ["a", "man", "'s", "hat"]),
    ("Two dogs, running (fast)!", ["two", "dogs", "running", "fast"]),
    ("a t-shirt that doesn't fit", ["a", "t-shirt", "that", "does", "n't", "fit"]),
    ('"Quoted"  text...\n', ["quoted", "text"]),
    ("", []),
])
def test_tokenize_matches_ptb_rules(text: str, tokens: list[str]) -> None:
    assert tokenize(text) == tokens


def test_vocabulary_min_count_specials_and_order() -> None:
    captions = [["a", "red", "circle"], ["a", "blue", "circle"], ["a", "red", "square"]]
    vocab = Vocabulary.build(captions, min_count=2)
    assert vocab.words[:4] == list(SPECIALS)
    assert vocab.words[4:] == ["a", "circle", "red"]  # most frequent first, ties by name
    assert Vocabulary.build(captions, min_count=1).words[-1] == "square"


def test_encode_decode_round_trip_truncation_and_unknown() -> None:
    vocab = Vocabulary.build([["a", "red", "circle"]] * 5, min_count=1)
    ids = vocab.encode(["a", "green", "circle", "extra"], max_length=3)
    assert ids[0] == vocab.start and ids[-1] == vocab.end and len(ids) == 5
    assert ids[2] == vocab.unk
    assert vocab.decode(ids) == ["a", "<unk>", "circle"]
    assert vocab.decode([vocab.start, vocab.index["red"], vocab.end, vocab.index["a"]]) == ["red"]


def test_vocabulary_survives_a_plain_list() -> None:
    vocab = Vocabulary.build([["x", "y"]] * 5)
    assert Vocabulary(vocab.to_list()).index == vocab.index
    with pytest.raises(ValueError):
        Vocabulary(["x", "y"])
