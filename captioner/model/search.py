"""Caption generation: greedy decoding, batched beam search and sampling.

The search sees a decoder only through `step(tokens [N], state) -> (log_probs [N, V], state)`
and a state tuple whose tensors carry the batch at dim 1, as torch's recurrent layers do. So any
cell works, and tests drive it with tiny hand-built models.

`max_length` bounds the decoding steps, the end token included: a finished caption has at most
max_length - 1 words, and one that never ends is cut at max_length words and returned as
unfinished rather than raising.

Ties go to the lower token id (the lower beam first), whatever the sort kernel does, so
captions are reproducible and beam_size=1 gives exactly the greedy caption.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from captioner.model.decoder import State
from captioner.model.decoding import check_options

Step = Callable[[Tensor, State], tuple[Tensor, State]]
NEG_INF = float("-inf")


@dataclass(frozen=True)
class Hypothesis:
    """One generated caption."""

    tokens: tuple[int, ...]  # generated ids, without the start and end tokens
    logprob: float  # sum of the token log-probabilities, the end token's included if emitted
    score: float  # what beams are ranked by: logprob, or logprob length-normalised
    finished: bool  # the end token was emitted


@torch.inference_mode()
def greedy(
    step: Step, state: State, *, bos: int, eos: int, max_length: int, banned: Sequence[int] = ()
) -> list[Hypothesis]:
    """The most likely next token at every step, for the whole batch at once."""
    return _walk(step, state, lambda scores: _top(scores, 1)[1][:, 0],
                 bos=bos, eos=eos, max_length=max_length, banned=banned)


@torch.inference_mode()
def sample(
    step: Step,
    state: State,
    *,
    bos: int,
    eos: int,
    max_length: int,
    temperature: float = 1.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
    banned: Sequence[int] = (),
) -> list[Hypothesis]:
    """Ancestral sampling from the model's distribution sharpened by `temperature`; with
    `top_k` > 0 only the k most likely tokens of each step can be drawn (top_k=1 is greedy).
    The hypotheses' log-probs are the model's own, untempered."""
    check_options(max_length=max_length, temperature=temperature, top_k=top_k)

    def choose(scores: Tensor) -> Tensor:
        # The scores are running totals; softmax ignores the per-row offset.
        candidates = None
        if top_k:
            scores, candidates = _top(scores, min(top_k, scores.shape[-1]))
        probs = torch.softmax(scores / temperature, dim=-1)
        picks = torch.multinomial(probs, 1, generator=generator)
        return (picks if candidates is None else candidates.gather(1, picks))[:, 0]

    return _walk(step, state, choose, bos=bos, eos=eos, max_length=max_length, banned=banned)


@torch.inference_mode()
def beam_search(
    step: Step,
    state: State,
    *,
    bos: int,
    eos: int,
    beam_size: int,
    max_length: int,
    length_penalty: float = 0.0,
    n_best: int = 1,
    banned: Sequence[int] = (),
) -> list[list[Hypothesis]]:
    """Up to `n_best` hypotheses per image, best first: finished ones by score, then (only to
    fill the list) unfinished ones cut at max_length.

    All images and beams advance together as one [B * beam_size] batch. Each step takes the
    2 * beam_size best extensions per image: those ending among the first beam_size go to the
    image's finished pool, the best beam_size others live on. An image stops once no live beam
    can beat its n_best-th finished one. score = logprob / ((5 + words) / 6) ** length_penalty
    (GNMT; 0 ranks by plain log-probability). Log-probs must be <= 0 for that early stop.
    """
    check_options(beam_size=beam_size, n_best=n_best, max_length=max_length)
    batch, device = _batch_size(state), state[0].device

    def score(logprob: Tensor | float, words: int) -> Tensor | float:
        return logprob / ((5 + words) / 6) ** length_penalty

    finished = _Finished(batch, n_best)
    beams = _Beams(images=torch.arange(batch, device=device),
                   logprob=torch.zeros(batch, 1, device=device),  # one beam per image at first
                   history=torch.zeros(batch, 1, 0, dtype=torch.long, device=device), state=state)
    tokens = torch.full((batch,), bos, dtype=torch.long, device=device)
    for t in range(max_length):
        log_probs, beams.state = step(tokens, beams.state)
        values, parent, word = _best_extensions(beams.logprob, _ban(log_probs, banned), beam_size)
        finished.add(*_ended(beams, values, parent, word, eos, beam_size, partial(score, words=t)))
        parent = beams.advance(values, parent, word, eos, beam_size)
        # Log-probs only fall as a beam grows, so the best score it can still reach is its
        # current log-prob at whichever length (next step or max_length) the penalty favours.
        best = beams.logprob[:, 0].double()
        bound = torch.maximum(score(best, t + 1), score(best, max_length))
        beams.keep(bound > finished.to_beat(beams.images), parent)
        tokens = beams.history[:, :, -1].reshape(-1)
        if not len(beams.images):
            break
    return finished.filled(beams, partial(score, words=max_length))


@dataclass
class _Beams:
    """The live beams: each image still searched, its beams' log-probs, words and states."""

    images: Tensor  # [A]: the original index of each image still searched
    logprob: Tensor  # [A, beams]
    history: Tensor  # [A, beams, t]: the words so far
    state: State  # batch dim A * beams

    def advance(self, values: Tensor, parent: Tensor, word: Tensor, eos: int, beam_size: int) -> Tensor:
        """Continue with the beam_size best extensions that did not end; their parent beams."""
        # Stable sort of the end flags: the first beam_size extensions that did not end.
        live = (word == eos).to(torch.int8).sort(dim=1, stable=True).indices[:, :beam_size]
        self.logprob = values.gather(1, live)
        parent, word = parent.gather(1, live), word.gather(1, live)
        steps = self.history.shape[-1]
        self.history = torch.cat([self.history.gather(1, parent.unsqueeze(-1).expand(-1, -1, steps)),
                                  word.unsqueeze(-1)], dim=-1)
        return parent

    def keep(self, searching: Tensor, parent: Tensor) -> None:
        """Drop the images that stopped; reorder the recurrent state to the surviving beams."""
        active, beams = parent.shape
        rows = (torch.arange(active, device=parent.device).unsqueeze(1) * self._beams + parent)[searching]
        self.state = tuple(s.index_select(1, rows.view(-1)) for s in self.state)
        self.images, self.logprob = self.images[searching], self.logprob[searching]
        self.history = self.history[searching]
        self._beams = beams

    _beams: int = 1  # beams per image in `state` (1 before the first step)


def _best_extensions(logprob: Tensor, log_probs: Tensor, beam_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """The 2 * beam_size best (log-prob, parent beam, word) of each image's extensions."""
    active, beams = logprob.shape
    vocab = log_probs.shape[-1]
    extended = (logprob.unsqueeze(-1) + log_probs.view(active, beams, vocab)).view(active, beams * vocab)
    if extended.shape[1] < 2 * beam_size:  # a tiny vocabulary on the first step
        extended = F.pad(extended, (0, 2 * beam_size - extended.shape[1]), value=NEG_INF)
    values, flat = _top(extended, 2 * beam_size)
    return values, (flat // vocab).clamp(max=beams - 1), flat % vocab


def _ended(beams: _Beams, values: Tensor, parent: Tensor, word: Tensor, eos: int, beam_size: int,
           score: Callable[[float], float]) -> tuple[list[int], list[Hypothesis]]:
    """The extensions that end with the end token among each image's first beam_size."""
    ended = (word == eos) & values.isfinite()
    ended[:, beam_size:] = False
    if not ended.any():
        return [], []
    rows, ranks = ended.nonzero(as_tuple=True)
    prefixes = beams.history[rows, parent[rows, ranks]].tolist()
    logprobs = values[rows, ranks].tolist()
    return beams.images[rows].tolist(), [Hypothesis(tuple(p), lp, score(lp), True)
                                         for p, lp in zip(prefixes, logprobs, strict=True)]


class _Finished:
    """The n_best finished hypotheses of each image so far, best first."""

    def __init__(self, batch: int, n_best: int) -> None:
        self.pools: list[list[Hypothesis]] = [[] for _ in range(batch)]
        self.n_best = n_best

    def add(self, images: list[int], hypotheses: list[Hypothesis]) -> None:
        for image, hypothesis in zip(images, hypotheses, strict=True):
            self.pools[image].append(hypothesis)
        for image in set(images):  # a stable sort: on equal scores the earlier one stays ahead
            self.pools[image] = sorted(self.pools[image], key=lambda h: -h.score)[: self.n_best]

    def filled(self, beams: _Beams, score: Callable[[float], float]) -> list[list[Hypothesis]]:
        """The pools, each topped up to n_best with the beams cut at max_length."""
        for image, logprobs, prefixes in zip(beams.images.tolist(), beams.logprob.tolist(),
                                             beams.history.tolist(), strict=True):
            cut = [Hypothesis(tuple(p), lp, score(lp), False)
                   for p, lp in zip(prefixes, logprobs, strict=True) if lp > NEG_INF]
            self.pools[image] += cut[: self.n_best - len(self.pools[image])]
        return self.pools

    def to_beat(self, images: Tensor) -> Tensor:
        """The score a live beam must exceed to enter each image's pool (float64 [len(images)])."""
        worst = [pool[-1].score if len(pool) == self.n_best else NEG_INF for pool in self.pools]
        return torch.tensor(worst, dtype=torch.float64, device=images.device)[images]


def _walk(
    step: Step,
    state: State,
    choose: Callable[[Tensor], Tensor],
    *,
    bos: int,
    eos: int,
    max_length: int,
    banned: Sequence[int],
) -> list[Hypothesis]:
    """One path per image, `choose` picking each next token from the running scores [N, V]."""
    check_options(max_length=max_length)
    batch, device = _batch_size(state), state[0].device
    tokens = torch.full((batch,), bos, dtype=torch.long, device=device)
    logprob = torch.zeros(batch, 1, device=device)
    ended = torch.zeros(batch, dtype=torch.bool, device=device)
    chosen = []
    for _ in range(max_length):
        log_probs, state = step(tokens, state)
        # Running totals, added exactly as beam search adds them, so beam_size=1 is greedy
        # even where the sum rounds two tokens to a tie.
        scores = logprob + _ban(log_probs, banned)
        tokens = torch.where(ended, eos, choose(scores))
        logprob = torch.where(ended.unsqueeze(1), logprob, scores.gather(1, tokens.unsqueeze(1)))
        chosen.append(tokens)
        ended |= tokens == eos
        if ended.all():
            break

    hypotheses = []
    for ids, total in zip(torch.stack(chosen, dim=1).tolist(), logprob[:, 0].tolist(), strict=True):
        finished = eos in ids
        words = tuple(ids[: ids.index(eos)] if finished else ids)
        hypotheses.append(Hypothesis(words, total, total, finished))
    return hypotheses


def _top(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k largest entries of each row of [N, M] and their indices, best first; equal values
    go to the lower index (torch.topk leaves ties to the kernel)."""
    values, indices = scores.topk(k, dim=1)
    kth = values[:, -1:]
    ties = scores == kth
    if bool((ties.sum(1) > (values == kth).sum(1)).any()):  # a tie straddles the cut
        above = scores > kth
        wanted = k - above.sum(1, keepdim=True)
        taken = above | (ties & (ties.cumsum(1) <= wanted))
        indices = taken.nonzero()[:, 1].view(-1, k)
    else:
        indices = indices.sort(dim=1).values
    values = scores.gather(1, indices)
    values, order = values.sort(dim=1, descending=True, stable=True)
    return values, indices.gather(1, order)


def _ban(log_probs: Tensor, banned: Sequence[int]) -> Tensor:
    if not banned:
        return log_probs
    index = torch.tensor(list(banned), dtype=torch.long, device=log_probs.device)
    return log_probs.index_fill(1, index, NEG_INF)


def _batch_size(state: State) -> int:
    return state[0].shape[1]
