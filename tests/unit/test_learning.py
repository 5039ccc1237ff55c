"""The model learns: on a small set of cached features, the caption loss falls tenfold within 150
steps (about a second on 2 CPU cores) and greedy decoding gives back every training caption; a
decoder trained to predict the current word instead of the next one fails the same check."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor
from torch.nn import functional as F

from captioner.data.vocab import Vocabulary
from captioner.model.decoder import Decoder
from captioner.model.network import CaptionModel
from captioner.model.search import greedy
from captioner.training.module import caption_loss

WORDS = "a red blue green circle square triangle and small".split()
# Captions that share their first words, so that the words after them must come from the image.
CAPTIONS = [f"a {c} {s}".split() for c in ("red", "blue", "green") for s in ("circle", "square", "triangle")]
CAPTIONS += ["a small red circle and a blue square".split(), "a red square and a green triangle".split()]
STEPS = 150

Loss = Callable[[CaptionModel, Tensor, Tensor, int], Tensor]


def shifted_by_one(model: CaptionModel, features: Tensor, captions: Tensor, pad: int) -> Tensor:
    """The classic off-by-one: each position is trained to predict its own input word."""
    batch, per_image, length = captions.shape
    captions = captions.reshape(batch * per_image, length)
    logits = model(features, captions[:, :-1], repeats=per_image)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), captions[:, :-1].reshape(-1),
                           ignore_index=pad)


def train_and_check(loss_fn: Loss) -> tuple[float, float, float]:
    """(first loss, last loss, share of training images whose greedy caption is exact)."""
    torch.manual_seed(0)
    vocab = Vocabulary(["<pad>", "<start>", "<end>", "<unk>", *WORDS])
    decoder = Decoder(len(vocab), cell="lstm", embed_dim=32, hidden_dim=64, dropout=0.0, pad_id=vocab.pad)
    model = CaptionModel(torch.nn.Identity(), decoder)  # cached features: no encoder runs
    features = torch.randn(len(CAPTIONS), 4096).relu()  # one distinct fc7 per caption
    encoded = [vocab.encode(c, 10) for c in CAPTIONS]
    captions = torch.full((len(encoded), 1, max(map(len, encoded))), vocab.pad)
    for i, ids in enumerate(encoded):
        captions[i, 0, :len(ids)] = torch.tensor(ids)
    optimizer = torch.optim.Adam(model.decoder.parameters(), lr=3e-3)
    losses = []
    for _ in range(STEPS):
        loss = loss_fn(model, features, captions, vocab.pad)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    hyps = greedy(model.decoder.step, model.decoder.initial_state(features), bos=vocab.start,
                  eos=vocab.end, max_length=12, banned=(vocab.pad, vocab.start))
    exact = sum(vocab.decode(h.tokens) == c for h, c in zip(hyps, CAPTIONS)) / len(CAPTIONS)
    return losses[0], losses[-1], exact


@pytest.fixture(autouse=True)
def one_thread():
    """A model this small computes fastest on one thread, and does not wait for a busy second core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_caption_loss_teaches_the_decoder_its_captions() -> None:
    first, last, exact = train_and_check(caption_loss)
    assert last < first / 10  # from ~ln(16) = 2.8 to well under 0.28
    assert exact == 1.0


def test_a_target_shift_bug_fails_the_same_check() -> None:
    first, last, exact = train_and_check(shifted_by_one)
    assert last < first / 10  # copying the input is easy: the loss alone would not notice
    assert exact < 0.2  # but the captions come out wrong
