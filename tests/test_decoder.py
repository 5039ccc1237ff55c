"""The recurrent decoder: shapes, cell choice, and the image feature setting the initial state."""

from __future__ import annotations

import pytest
import torch

from captioner.decoder import Decoder


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("layers", [1, 2])
def test_shapes(cell: str, layers: int) -> None:
    decoder = Decoder(30, cell=cell, feature_dim=64, embed_dim=16, hidden_dim=24,
                      num_layers=layers).eval()
    features, inputs = torch.randn(4, 64), torch.randint(0, 30, (4, 7))
    assert decoder(features, inputs).shape == (4, 7, 30)
    state = decoder.initial_state(features)
    assert len(state) == (2 if cell == "lstm" else 1)
    assert all(s.shape == (layers, 4, 24) for s in state)
    log_probs, new_state = decoder.step(inputs[:, 0], state)
    assert log_probs.shape == (4, 30)
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(4))
    assert [s.shape for s in new_state] == [s.shape for s in state]


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_image_feature_changes_initial_state_and_words(cell: str) -> None:
    torch.manual_seed(0)
    decoder = Decoder(30, cell=cell, feature_dim=64, embed_dim=16, hidden_dim=24).eval()
    a, b = torch.randn(1, 64), torch.randn(1, 64)
    for sa, sb in zip(decoder.initial_state(a), decoder.initial_state(b)):
        assert not torch.allclose(sa, sb)
    inputs = torch.randint(0, 30, (1, 5))
    assert not torch.allclose(decoder(a, inputs), decoder(b, inputs))


def test_step_matches_teacher_forcing() -> None:
    torch.manual_seed(0)
    decoder = Decoder(30, cell="lstm", feature_dim=64, embed_dim=16, hidden_dim=24).eval()
    features, inputs = torch.randn(2, 64), torch.randint(0, 30, (2, 5))
    full = torch.log_softmax(decoder(features, inputs), -1)
    state = decoder.initial_state(features)
    for t in range(5):
        log_probs, state = decoder.step(inputs[:, t], state)
        torch.testing.assert_close(log_probs, full[:, t])


def test_padding_is_masked_and_cell_is_checked() -> None:
    decoder = Decoder(10, cell="gru", feature_dim=8, embed_dim=4, hidden_dim=4, pad_id=0)
    assert torch.equal(decoder.embed.weight[0], torch.zeros(4))
    with pytest.raises(ValueError, match="decoder.cell"):
        Decoder(10, cell="transformer")
