"""Visual concepts: what an image's captions agree it shows, as targets for an auxiliary loss.

A CNN trained from scratch learns slowly from the caption loss alone, which reaches it through
the decoder's initial state. A multi-label head on fc7 that predicts which concepts the image's
captions name (Fang et al. 2015, "From captions to visual concepts and back") gives it a direct
signal. Two choices make that signal clean; both were measured to matter (README, "The built-in
dataset and the default model"):

- **Word forms are merged** with nltk's Porter stemmer (pure code, no downloaded data):
  "circle" and "circles" are one concept. As separate targets, "circle" would read "no" on every
  image whose circles are counted ("two red circles"), telling the CNN that circles are absent.
- **Only words annotators agree on**: a word is a concept if, on the images whose captions use
  it, at least `min_agreement` of that image's captions use it. Colour and shape words are used
  by every caption of their image; phrasing words ("picture", "there", "background") and
  optional ones ("small", "left") are not, and as targets they are noise the CNN tries to fit.

Adjacent word pairs as concepts too ("red circl", binding colour to shape) were tried and made
the default model worse (README), so concepts are single stemmed words.
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


def caption_terms(tokens: Sequence[str], vocab: Vocabulary) -> set[str]:
    """The stemmed vocabulary words of one caption."""
    return {_stem(w) for w in tokens if w in vocab.index and w not in SPECIALS}


def visual_concepts(captions_per_image: Iterable[Sequence[Sequence[str]]], vocab: Vocabulary,
                    min_agreement: float, min_images: int = 5) -> list[str]:
    """Concepts (sorted terms) from tokenised training captions, one list of captions per image.

    A word needs `min_images` images, so that a rare word cannot become a target by accident.
    """
    shares: dict[str, list[float]] = defaultdict(list)
    for captions in captions_per_image:
        terms = [caption_terms(tokens, vocab) for tokens in captions]
        for term in set().union(*terms):
            shares[term].append(sum(term in t for t in terms) / len(terms))
    return sorted(term for term, s in shares.items()
                  if len(s) >= min_images and sum(s) / len(s) >= min_agreement)


def concept_targets(captions: Sequence[Sequence[str]], concepts: Sequence[str],
                    vocab: Vocabulary) -> Tensor:
    """[C] 1.0 for each concept that any of the image's captions names."""
    column = {term: i for i, term in enumerate(concepts)}
    targets = torch.zeros(len(concepts))
    for tokens in captions:
        for term in caption_terms(tokens, vocab):
            if term in column:
                targets[column[term]] = 1.0
    return targets
