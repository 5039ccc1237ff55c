"""Caption search: beam search against brute-force enumeration, greedy and sampling against each
other, and the failure modes users hit (no end token, batch effects, banned ids)."""

from __future__ import annotations

import itertools

import pytest
import torch

from captioner.model.decoder import Decoder
from captioner.model.search import Hypothesis, beam_search, greedy, sample

PAD, BOS, WORDS, EOS = 0, 1, (2, 3, 4), 5
VOCAB = 6
SPECIAL = (PAD, BOS)


class TinyRNN:
    """A random-weight Elman RNN in float64, one initial state per image: history-dependent like
    a real decoder, small enough to enumerate every caption."""

    def __init__(self, images: int = 3, hidden: int = 8, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        randn = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
        self.embed, self.recur = randn(VOCAB, hidden), 0.5 * randn(hidden, hidden)
        self.out, self.h0 = 2.0 * randn(hidden, VOCAB), randn(1, images, hidden)

    def step(self, tokens: torch.Tensor, state: tuple[torch.Tensor, ...]):
        h = torch.tanh(self.embed[tokens] + state[0][0] @ self.recur)
        return torch.log_softmax(h @ self.out, dim=-1), (h.unsqueeze(0),)

    def state(self) -> tuple[torch.Tensor, ...]:
        return (self.h0,)

    def logprob(self, image: int, tokens: tuple[int, ...]) -> float:
        state, previous, total = (self.h0[:, image : image + 1],), BOS, 0.0
        for token in tokens:
            log_probs, state = self.step(torch.tensor([previous]), state)
            total, previous = total + log_probs[0, token].item(), token
        return total


def gnmt(logprob: float, words: int, alpha: float) -> float:
    return logprob / ((5 + words) / 6) ** alpha


def all_captions(model: TinyRNN, image: int, max_length: int, alpha: float) -> list[Hypothesis]:
    """Every caption the search may return, best first: finished ones, then those cut off."""
    finished = [
        Hypothesis(words, lp, gnmt(lp, len(words), alpha), True)
        for n in range(max_length)
        for words in itertools.product(WORDS, repeat=n)
        for lp in [model.logprob(image, (*words, EOS))]
    ]
    cut = [
        Hypothesis(words, lp, gnmt(lp, max_length, alpha), False)
        for words in itertools.product(WORDS, repeat=max_length)
        for lp in [model.logprob(image, words)]
    ]
    by_score = lambda hs: sorted(hs, key=lambda h: -h.score)  # noqa: E731
    return by_score(finished) + by_score(cut)


def assert_same(found: list[Hypothesis], expected: list[Hypothesis]) -> None:
    assert [(h.tokens, h.finished) for h in found] == [(h.tokens, h.finished) for h in expected]
    assert [h.score for h in found] == pytest.approx([h.score for h in expected], rel=1e-9)
    assert [h.logprob for h in found] == pytest.approx([h.logprob for h in expected], rel=1e-9)


@pytest.mark.parametrize("alpha", [0.0, 0.7, 2.0, -0.5])
@pytest.mark.parametrize("max_length", [3, 4])
def test_exhaustive_beam_finds_the_true_best_captions(alpha: float, max_length: int) -> None:
    model = TinyRNN()
    found = beam_search(model.step, model.state(), bos=BOS, eos=EOS, beam_size=VOCAB**max_length,
                        max_length=max_length, length_penalty=alpha, n_best=10, banned=SPECIAL)
    for image, hypotheses in enumerate(found):
        assert_same(hypotheses, all_captions(model, image, max_length, alpha)[:10])


@pytest.mark.parametrize("alpha", [0.0, 0.7])
@pytest.mark.parametrize("beam_size", [1, 2, 3])
def test_small_beams_score_their_captions_exactly(alpha: float, beam_size: int) -> None:
    model, max_length = TinyRNN(images=4, seed=1), 4
    found = beam_search(model.step, model.state(), bos=BOS, eos=EOS, beam_size=beam_size,
                        max_length=max_length, length_penalty=alpha, n_best=beam_size,
                        banned=SPECIAL)
    for image, hypotheses in enumerate(found):
        assert 1 <= len(hypotheses) <= beam_size
        for h in hypotheses:
            assert len(h.tokens) <= max_length - 1 if h.finished else len(h.tokens) == max_length
            emitted = (*h.tokens, EOS) if h.finished else h.tokens
            assert h.logprob == pytest.approx(model.logprob(image, emitted), rel=1e-9)
            assert h.score == pytest.approx(gnmt(h.logprob, len(h.tokens), alpha), rel=1e-12)
        assert hypotheses[0].score <= all_captions(model, image, max_length, alpha)[0].score + 1e-9


def counting_step(rows: list[dict[int, float]]):
    """A model whose next-token probabilities depend only on how many steps it has taken
    (rows[n]: token -> probability at step n, the last row repeating)."""
    probs = torch.full((len(rows), VOCAB), 1e-6)
    for n, row in enumerate(rows):
        for token, p in row.items():
            probs[n, token] = p
    table = torch.log_softmax(probs.log(), dim=-1)

    def step(tokens, state):
        return table[state[0][0, :, 0].clamp(max=len(rows) - 1)], (state[0] + 1,)

    return step


@pytest.mark.parametrize(
    ("rows", "alpha", "expected"),
    [  # End at once (0.7) or say 2 six times, then end (0.3): alpha=2 favours the long one.
        ([{EOS: 0.7, 2: 0.3}, *[{2: 1.0}] * 5, {EOS: 1.0}], 0.0, ()),
        ([{EOS: 0.7, 2: 0.3}, *[{2: 1.0}] * 5, {EOS: 1.0}], 2.0, (2,) * 6),
        # Negative alpha favours short captions, yet "2" (0.6) still beats ending at once (0.4).
        ([{EOS: 0.4, 2: 0.6}, {EOS: 1.0}], -1.0, (2,)),
    ],
)
def test_the_early_stop_never_drops_a_better_caption(rows, alpha, expected) -> None:
    state = (torch.zeros(1, 1, 1, dtype=torch.long),)
    best = beam_search(counting_step(rows), state, bos=BOS, eos=EOS, beam_size=2, max_length=8,
                       length_penalty=alpha, banned=SPECIAL)[0][0]
    assert best.tokens == expected and best.finished


def test_n_best_are_distinct_and_sorted_best_first() -> None:
    model = TinyRNN(images=5, seed=2)
    for hypotheses in beam_search(model.step, model.state(), bos=BOS, eos=EOS, beam_size=6,
                                  max_length=4, n_best=6, banned=SPECIAL):
        assert len({h.tokens for h in hypotheses}) == len(hypotheses) == 6
        keys = [(h.finished, h.score) for h in hypotheses]
        assert keys == sorted(keys, reverse=True)


def test_ties_go_to_the_lowest_token_id() -> None:
    def uniform(tokens, state):
        return torch.full((len(tokens), VOCAB), -1.0), state

    state = (torch.zeros(1, 2, 1),)
    assert [h.tokens for h in greedy(uniform, state, bos=BOS, eos=EOS, max_length=4,
                                     banned=SPECIAL)] == [(2, 2, 2, 2)] * 2
    found = beam_search(uniform, state, bos=BOS, eos=EOS, beam_size=3, max_length=4, n_best=3,
                        banned=SPECIAL)
    expected = [(2, 2, 2, 2), (2, 2, 2, 3), (2, 2, 2, 4)]
    assert [[h.tokens for h in hs] for hs in found] == [expected] * 2


def no_end(step):
    def wrapped(tokens, state):
        log_probs, state = step(tokens, state)
        return log_probs.index_fill(1, torch.tensor([EOS]), float("-inf")), state

    return wrapped


@pytest.mark.parametrize("how", ["banned", "-inf"])
def test_captions_without_an_end_are_cut_at_max_length(how: str) -> None:
    model = TinyRNN()
    if how == "banned":
        step, banned = model.step, (*SPECIAL, EOS)
    else:
        step, banned = no_end(model.step), SPECIAL
    kwargs = dict(bos=BOS, eos=EOS, max_length=5, banned=banned)
    found = [
        *greedy(step, model.state(), **kwargs),
        *sample(step, model.state(), generator=torch.Generator().manual_seed(0), **kwargs),
        *itertools.chain(*beam_search(step, model.state(), beam_size=3, n_best=3, **kwargs)),
    ]
    assert len(found) == 3 + 3 + 9
    assert all(len(h.tokens) == 5 and not h.finished and h.logprob > float("-inf") for h in found)


def features(images: int, seed: int) -> torch.Tensor:
    return torch.randn(images, 24, generator=torch.Generator().manual_seed(seed))


def decoder(cell: str, vocab: int = 40) -> Decoder:
    torch.manual_seed(0)
    model = Decoder(vocab, cell=cell, feature_dim=24, embed_dim=16, hidden_dim=32, num_layers=2)
    with torch.no_grad():  # peaked, varied outputs; with each cell some captions end, some not
        model.out.weight *= 8.0
        model.out.bias[EOS] += 0.25
    return model.eval()


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_beam_of_one_is_greedy(cell: str) -> None:
    model, images = decoder(cell), features(16, 1)
    kwargs = dict(bos=BOS, eos=EOS, max_length=12, banned=SPECIAL)
    with torch.inference_mode():
        expected = greedy(model.step, model.initial_state(images), **kwargs)
        found = beam_search(model.step, model.initial_state(images), beam_size=1, **kwargs)
    # Beam search drops images as they finish; CPU matmuls round a row differently when the batch
    # shrinks, so the sums may differ in the last digits, never the captions.
    found = [hs[0] for hs in found]
    assert [(h.tokens, h.finished) for h in found] == [(h.tokens, h.finished) for h in expected]
    assert [h.logprob for h in found] == pytest.approx([h.logprob for h in expected], abs=1e-4)
    assert 0 < sum(h.finished for h in expected) < len(expected)


def test_a_caption_does_not_depend_on_the_rest_of_the_batch() -> None:
    model, g = decoder("lstm"), torch.Generator().manual_seed(2)
    image, others = torch.randn(1, 24, generator=g), torch.randn(64, 24, generator=g)
    kwargs = dict(bos=BOS, eos=EOS, beam_size=3, n_best=3, max_length=12, banned=SPECIAL)
    with torch.inference_mode():
        alone = beam_search(model.step, model.initial_state(image), **kwargs)[0]
        batch = torch.cat([others[:20], image, others[20:]])
        among = beam_search(model.step, model.initial_state(batch), **kwargs)[20]
    assert [h.tokens for h in among] == [h.tokens for h in alone]
    assert [h.score for h in among] == pytest.approx([h.score for h in alone], abs=1e-5)


def test_banned_tokens_never_appear() -> None:
    model, images = decoder("gru"), features(8, 3)
    banned = (*SPECIAL, 7, 11)
    kwargs = dict(bos=BOS, eos=EOS, max_length=10, banned=banned)
    with torch.inference_mode():
        state = model.initial_state(images)
        found = [*greedy(model.step, state, **kwargs),
                 *sample(model.step, state, generator=torch.Generator().manual_seed(0), **kwargs),
                 *itertools.chain(*beam_search(model.step, state, beam_size=4, n_best=4, **kwargs))]
    assert not {t for h in found for t in h.tokens} & set(banned)


def test_sampling_with_top_k_of_one_is_greedy() -> None:
    model, images = decoder("lstm"), features(8, 9)
    kwargs = dict(bos=BOS, eos=EOS, max_length=12, banned=SPECIAL)
    with torch.inference_mode():
        state = model.initial_state(images)
        expected = greedy(model.step, state, **kwargs)
        for temperature in (0.5, 1.0, 3.0):
            assert sample(model.step, state, temperature=temperature, top_k=1, **kwargs) == expected


def test_sampling_is_reproducible_and_scores_untempered_log_probs() -> None:
    model = TinyRNN(images=3)
    draws = {
        seed: sample(model.step, model.state(), bos=BOS, eos=EOS, max_length=6, temperature=1.5,
                     top_k=3, generator=torch.Generator().manual_seed(seed), banned=SPECIAL)
        for seed in (0, 0, 1, 2)
    }
    again = sample(model.step, model.state(), bos=BOS, eos=EOS, max_length=6, temperature=1.5,
                   top_k=3, generator=torch.Generator().manual_seed(0), banned=SPECIAL)
    assert again == draws[0]
    assert len({tuple(h.tokens for h in hs) for hs in draws.values()}) > 1
    for image, h in enumerate(again):
        emitted = (*h.tokens, EOS) if h.finished else h.tokens
        assert h.logprob == pytest.approx(model.logprob(image, emitted), rel=1e-9) == h.score


def test_an_empty_batch_gives_no_captions() -> None:
    state = (torch.zeros(1, 0, 8, dtype=torch.float64),)
    kwargs = dict(bos=BOS, eos=EOS, max_length=4)
    assert beam_search(TinyRNN().step, state, beam_size=3, **kwargs) == []
    assert greedy(TinyRNN().step, state, **kwargs) == []


@pytest.mark.parametrize(
    "settings", [dict(beam_size=0), dict(n_best=4), dict(max_length=0)]
)
def test_impossible_settings_are_refused(settings: dict) -> None:
    kwargs = dict(bos=BOS, eos=EOS, beam_size=3, max_length=4) | settings
    with pytest.raises(ValueError):
        beam_search(TinyRNN().step, TinyRNN().state(), **kwargs)
