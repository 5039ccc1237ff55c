"""Visual concepts: what an image's captions agree it shows, as targets for an auxiliary loss.

A CNN trained from scratch learns slowly from the caption loss alone, which reaches it through
the decoder's initial state. A multi-label head on fc7 that predicts which concepts the image's
captions name (Fang et al. 2015, "From captions to visual concepts and back") gives it a direct
signal. Three choices make that signal clean; each was measured to matter (README, "The
built-in dataset and the default model"):

- **Word forms are merged** with nltk's Porter stemmer (pure code, no downloaded data):
  "circle" and "circles" are one concept. As separate targets, "circle" would read "no" on every
  image whose circles are counted ("two red circles"), telling the CNN that circles are absent.
- **Only terms annotators agree on**: a term is a concept if, on the images whose captions use
  it, at least `min_agreement` of that image's captions use it. Colour and shape words are used
  by every caption of their image; phrasing words ("picture", "there", "background") and
  optional ones ("small", "left") are not, and as targets they are noise the CNN tries to fit.
- **Phrases bind words**: "red" and "circle" as separate targets cannot tell a red circle and a
  blue square from a blue circle and a red square. Ordered pairs of concept words at most
  `window` positions apart ("red circl"; "a small red circle" too) are concepts as well, under
  the same agreement rule. Articles and number words take no part in phrases: "two red" (counting
  by colour) as a target made the CNN worse at the pairs that matter.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from functools import lru_cache

import torch
from nltk.stem import PorterStemmer
from torch import Tensor

from captioner.data.vocab import SPECIALS, Vocabulary

_stem = lru_cache(maxsize=None)(PorterStemmer().stem)  # a few thousand distinct words, reused

# Articles and words that say how many, not what: they join no phrase.
_FUNCTION_WORDS = frozenset(_stem(w) for w in (
    "a", "an", "the", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "some", "many", "several", "few", "lots", "group", "couple", "pair", "bunch"))


def caption_terms(tokens: Sequence[str], vocab: Vocabulary) -> set[str]:
    """The stemmed vocabulary words of one caption."""
    return {_stem(w) for w in tokens if w in vocab.index and w not in SPECIALS}


def caption_phrases(tokens: Sequence[str], words: set[str], window: int) -> set[str]:
    """Ordered pairs "a b" of the given (stemmed) words, b at most `window` positions after a."""
    stems = [_stem(w) for w in tokens]
    usable = [s if s in words and s not in _FUNCTION_WORDS else None for s in stems]
    return {f"{a} {b}" for i, a in enumerate(usable) if a
            for b in usable[i + 1: i + 1 + window] if b and b != a}


def _agreed(terms_per_image: Iterable[list[set[str]]], min_agreement: float,
            min_images: int) -> list[str]:
    """Terms that, on the images whose captions use them, most of those captions use."""
    shares: dict[str, list[float]] = defaultdict(list)
    for terms in terms_per_image:
        for term in set().union(*terms):
            shares[term].append(sum(term in t for t in terms) / len(terms))
    return sorted(term for term, s in shares.items()
                  if len(s) >= min_images and sum(s) / len(s) >= min_agreement)


def visual_concepts(captions_per_image: Iterable[Sequence[Sequence[str]]], vocab: Vocabulary,
                    min_agreement: float, min_images: int = 5, window: int = 2) -> list[str]:
    """Concepts from tokenised training captions, one list of captions per image: the agreed
    words (sorted), then the agreed phrases of those words (sorted; none when `window` is 0).

    A term needs `min_images` images, so that a rare one cannot become a target by accident.
    """
    images = [list(captions) for captions in captions_per_image]
    words = _agreed(([caption_terms(t, vocab) for t in captions] for captions in images),
                    min_agreement, min_images)
    if window <= 0:
        return words
    agreed = set(words)
    phrases = _agreed(([caption_phrases(t, agreed, window) for t in captions] for captions in images),
                      min_agreement, min_images)
    return words + phrases


def concept_targets(captions: Sequence[Sequence[str]], concepts: Sequence[str],
                    vocab: Vocabulary, window: int = 2) -> Tensor:
    """[C] 1.0 for each concept (word or phrase) that any of the image's captions names."""
    column = {term: i for i, term in enumerate(concepts)}
    words = {c for c in concepts if " " not in c}
    targets = torch.zeros(len(concepts))
    for tokens in captions:
        terms = caption_terms(tokens, vocab)
        if window > 0:
            terms |= caption_phrases(tokens, words, window)
        for term in terms:
            if term in column:
                targets[column[term]] = 1.0
    return targets
