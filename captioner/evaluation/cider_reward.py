"""Rewards for self-critical training: coco-caption's CIDEr-D (and smoothed BLEU-4) of a whole
batch of sampled captions at once, against the training references.

CIDEr-D's document frequencies and log(N) come from the training set's references and are
computed once, when the rewards are built (as self-critical.pytorch does with its
"coco-train-idxs" file), not from the batch. Scoring is tensor work, never one pycocoevalcap call
per caption: every n-gram is one integer, its words' indices as the digits of a number in base
W + U + 1 (the W reference words are 1..W; the U model words no reference has, such as <unk>,
are W + 1..W + U and match nothing), so counting n-grams is `unique`, finding a document
frequency or a reference's weight is `searchsorted`, and each caption meets all its image's
references in one gather. The formulas are pycocoevalcap's (cider_scorer.py): tf-idf vectors per
n = 1..4, the caption's weight clipped to the reference's (min(h, r) * r), cosine per n, a
Gaussian length penalty (sigma 6) on the difference in bigram counts, the mean over n and over
references, x10. Words are compared as strings, the references' own, not the model's ids.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

NGRAMS = 4
SIGMA = 6.0
_EPSILON = 0.1  # nltk's smoothing method1: what a zero n-gram match count becomes in BLEU


@dataclass(frozen=True)
class _Table:
    """One n's reference n-grams: their codes, idf, and every (reference, n-gram) pair."""

    known: Tensor  # [K] sorted codes of the n-grams some reference has
    idf: Tensor  # [K] log(N) - log(document frequency)
    pairs: Tensor  # [P] sorted reference * K + index into known
    weights: Tensor  # [P] tf-idf of the pair (float64)
    counts: Tensor  # [P] term frequency of the pair


@dataclass(frozen=True)
class Rewards:
    """Per-caption CIDEr-D and BLEU-4 (smoothed, per caption), float64 [N]."""

    cider: Tensor
    bleu4: Tensor


def ngram_counts(words: Tensor, lengths: Tensor, n: int, base: int) -> tuple[Tensor, Tensor, Tensor]:
    """(row, code, count) of every distinct n-gram of each row of words [N, T] (ids >= 1; only the
    first lengths[i] of row i count), sorted by row then code."""
    rows, width = words.shape
    if width < n:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty, empty
    windows = words.unfold(1, n, 1)  # [N, T - n + 1, n]
    codes = (windows * base ** torch.arange(n, dtype=torch.long)).sum(-1)
    valid = torch.arange(width - n + 1).unsqueeze(0) < (lengths - n + 1).unsqueeze(1)
    row = torch.arange(rows).unsqueeze(1).expand_as(codes)[valid]
    codes = codes[valid]
    span = base ** n  # every code is below it
    if rows * span < 2 ** 63:  # one sortable key per (row, code): a flat unique, several times faster
        keys, counts = torch.unique(row * span + codes, return_counts=True)
        return keys // span, keys % span, counts
    distinct, counts = torch.unique(torch.stack([row, codes], 1), dim=0, return_counts=True)
    return distinct[:, 0], distinct[:, 1], counts


def _lookup(sorted_values: Tensor, queries: Tensor) -> tuple[Tensor, Tensor]:
    """Index of each query in a sorted tensor and whether it is there."""
    if not len(sorted_values):
        return torch.zeros_like(queries), torch.zeros_like(queries, dtype=torch.bool)
    at = torch.searchsorted(sorted_values, queries.contiguous()).clamp(max=len(sorted_values) - 1)
    return at, sorted_values[at] == queries


class CaptionRewards:
    """CIDEr-D and BLEU-4 of captions of the training images, against their references.

    `references`: image id -> its reference captions as coco-caption tokens; `vocab`: the model's
    words by id, for turning sampled ids into the references' words.
    """

    def __init__(self, references: Mapping[int, Sequence[Sequence[str]]], vocab: Sequence[str]) -> None:
        words = sorted({w for refs in references.values() for ref in refs for w in ref})
        index = {w: i + 1 for i, w in enumerate(words)}
        for w in vocab:  # model words no reference has: each its own index, matching nothing
            index.setdefault(w, len(index) + 1)
        self.base = len(index) + 1
        if self.base ** NGRAMS >= 2 ** 63:
            raise ValueError(f"{len(words)} distinct reference words: too many for 64-bit 4-gram codes")
        self.translate = torch.tensor([index[w] for w in vocab], dtype=torch.long)
        self.image_ids = torch.tensor(sorted(references), dtype=torch.long)
        per_image = [references[int(i)] for i in self.image_ids]
        counts = torch.tensor([len(refs) for refs in per_image], dtype=torch.long)
        if not len(counts) or int(counts.min()) == 0:
            raise ValueError("every training image needs at least one reference caption")
        self.first_ref = torch.cumsum(counts, 0) - counts
        self.ref_counts = counts
        flat = [[index[w] for w in ref] for refs in per_image for ref in refs]
        self.ref_words = torch.tensor([len(ref) for ref in flat], dtype=torch.long)
        image_of_ref = torch.repeat_interleave(torch.arange(len(per_image)), counts)
        self.log_images = torch.log(torch.tensor(float(len(per_image)), dtype=torch.float64))
        padded = _padded(flat)
        self.tables = [self._table(padded, image_of_ref, n) for n in range(1, NGRAMS + 1)]
        squares = torch.zeros(len(flat), NGRAMS, dtype=torch.float64)
        for n, table in enumerate(self.tables):
            squares[:, n].index_add_(0, table.pairs // max(len(table.known), 1), table.weights ** 2)
        self.ref_norms = squares.sqrt()

    def _table(self, refs: Tensor, image_of_ref: Tensor, n: int) -> _Table:
        row, code, count = ngram_counts(refs, self.ref_words, n, self.base)
        # Document frequency: in how many images' reference sets an n-gram occurs.
        in_images = torch.unique(torch.stack([code, image_of_ref[row]], 1), dim=0)[:, 0]
        known, frequency = torch.unique(in_images, return_counts=True)
        idf = self.log_images - torch.log(frequency.double())
        at, _ = _lookup(known, code)
        return _Table(known, idf, row * len(known) + at, count * idf[at], count)

    def __call__(self, image_ids: Tensor, tokens: Tensor, lengths: Tensor) -> Rewards:
        """Rewards of captions [N, T] of model ids (words only; lengths [N]) of these training images."""
        tokens, lengths = tokens.cpu(), lengths.cpu()
        at, found = _lookup(self.image_ids, image_ids.cpu())
        if not bool(found.all()):
            raise KeyError(f"image {int(image_ids.cpu()[~found][0])} has no training references")
        most = int(self.ref_counts.max())
        slot = torch.arange(most).unsqueeze(0)
        refs = (self.first_ref[at].unsqueeze(1) + slot).clamp(max=len(self.ref_words) - 1)  # [N, R]
        valid = slot < self.ref_counts[at].unsqueeze(1)
        words = self.translate[tokens] * (torch.arange(tokens.shape[1]) < lengths.unsqueeze(1))
        overlap, hyp_norms, matches, totals = self._overlaps(words, lengths, refs, valid)
        return Rewards(self._cider(overlap, hyp_norms, lengths, refs, valid),
                       _bleu4(matches, totals, lengths, self.ref_words[refs], valid))

    def _overlaps(self, words: Tensor, lengths: Tensor, refs: Tensor,
                  valid: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per caption and n: the clipped tf-idf products with each reference [N, R, 4], the
        caption's tf-idf norms [N, 4], BLEU's clipped matches [N, 4] and n-gram totals [N, 4]."""
        rows, most = refs.shape
        overlap = torch.zeros(rows, most, NGRAMS, dtype=torch.float64)
        squares = torch.zeros(rows, NGRAMS, dtype=torch.float64)
        matches = torch.zeros(rows, NGRAMS, dtype=torch.float64)
        totals = torch.zeros(rows, NGRAMS, dtype=torch.float64)
        for n, table in enumerate(self.tables):
            row, code, count = ngram_counts(words, lengths, n + 1, self.base)
            at, known = _lookup(table.known, code)
            # An n-gram no reference has: document frequency 0, counted as 1 (idf = log N).
            weight = count * torch.where(known, table.idf[at], self.log_images)
            squares[:, n].index_add_(0, row, weight ** 2)
            totals[:, n].index_add_(0, row, count.double())
            row, at, weight, count = row[known], at[known], weight[known], count[known]
            pair, present = _lookup(table.pairs, refs[row] * len(table.known) + at.unsqueeze(1))
            present &= valid[row]
            ref_weight = torch.where(present, table.weights[pair], 0.0)
            overlap[:, :, n].index_add_(0, row, torch.minimum(weight.unsqueeze(1), ref_weight) * ref_weight)
            most_in_a_ref = torch.where(present, table.counts[pair], 0).max(1).values
            matches[:, n].index_add_(0, row, torch.minimum(count, most_in_a_ref).double())
        return overlap, squares.sqrt(), matches, totals

    def _cider(self, overlap: Tensor, hyp_norms: Tensor, lengths: Tensor, refs: Tensor,
               valid: Tensor) -> Tensor:
        norms = hyp_norms.unsqueeze(1) * self.ref_norms[refs]  # [N, R, 4]
        cosine = torch.where(norms != 0, overlap / torch.where(norms != 0, norms, 1.0), overlap)
        # pycocoevalcap's "length" is the bigram count: words - 1, and 0 for an empty caption.
        delta = ((lengths.unsqueeze(1) - 1).clamp(min=0) - (self.ref_words[refs] - 1).clamp(min=0)).double()
        penalty = torch.exp(-(delta ** 2) / (2 * SIGMA ** 2))
        per_ref = cosine.mean(-1) * penalty * valid
        return 10.0 * per_ref.sum(1) / valid.sum(1)


def _bleu4(matches: Tensor, totals: Tensor, lengths: Tensor, ref_lengths: Tensor, valid: Tensor) -> Tensor:
    """nltk's sentence_bleu (weights 1/4, smoothing method1) from clipped counts."""
    precision = torch.where(matches > 0, matches, _EPSILON) / totals.clamp(min=1)
    length = lengths.unsqueeze(1).double()
    # The reference length closest to the caption's; on a tie the shorter one (nltk's rule).
    distance = (ref_lengths - length).abs() * 1e6 + ref_lengths
    closest = torch.where(valid, distance, float("inf")).argmin(1)
    ref_length = ref_lengths.gather(1, closest.unsqueeze(1)).squeeze(1).double()
    hyp = lengths.double()
    brevity = torch.where(hyp > ref_length, 1.0, torch.exp(1 - ref_length / hyp.clamp(min=1)))
    score = brevity * torch.exp(precision.log().mean(1))
    return torch.where((matches[:, 0] > 0) & (hyp > 0), score, 0.0)


def _padded(rows: Sequence[Sequence[int]]) -> Tensor:
    longest = max((len(r) for r in rows), default=0)
    out = torch.zeros(len(rows), max(longest, 1), dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out
