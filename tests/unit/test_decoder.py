"""The recurrent decoder: shapes, cell choice, and the image feature setting the initial state."""

from __future__ import annotations

import pytest
import torch

from captioner.model.decoder import Decoder
from captioner.util.hardware import fast_bf16


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
    inputs = torch.randint(1, 30, (1, 5))  # 0 is the pad id
    assert not torch.allclose(decoder(a, inputs), decoder(b, inputs))


def test_step_matches_teacher_forcing() -> None:
    torch.manual_seed(0)
    decoder = Decoder(30, cell="lstm", feature_dim=64, embed_dim=16, hidden_dim=24).eval()
    features, inputs = torch.randn(2, 64), torch.randint(1, 30, (2, 5))
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


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_padding_does_not_change_a_captions_logits(cell: str) -> None:
    # Teacher forcing packs the batch: a caption padded to a longer neighbour's length gets the
    # logits it gets alone, at every real position.
    torch.manual_seed(0)
    decoder = Decoder(30, cell=cell, feature_dim=64, embed_dim=16, hidden_dim=24, pad_id=0).eval()
    features = torch.randn(2, 64)
    short, long = torch.randint(1, 30, (1, 3)), torch.randint(1, 30, (1, 6))
    batch = torch.cat([torch.cat([short, torch.zeros(1, 3, dtype=torch.long)], 1), long])
    logits = decoder(features, batch)
    torch.testing.assert_close(logits[0, :3], decoder(features[:1], short)[0])
    torch.testing.assert_close(logits[1], decoder(features[1:], long)[0])


def test_each_feature_serves_repeats_captions() -> None:
    torch.manual_seed(0)
    decoder = Decoder(30, cell="lstm", feature_dim=64, embed_dim=16, hidden_dim=24).eval()
    features, inputs = torch.randn(2, 64), torch.randint(1, 30, (6, 5))
    torch.testing.assert_close(decoder(features, inputs, repeats=3),
                               decoder(features.repeat_interleave(3, dim=0), inputs))


@pytest.mark.skipif(not fast_bf16(torch.device("cpu")),
                    reason="needs a CPU with bf16 units (AVX512-BF16 or AMX): oneDNN has no bf16 LSTM "
                           "on AVX2-only CPUs, and training there runs in fp32")
def test_the_recurrent_layer_runs_in_fp32_for_captions_and_bf16_for_training() -> None:
    # bf16 kernels make results depend on batch composition, so captions (eval mode) keep the
    # recurrence in fp32 under autocast; training (train mode) takes bf16's speed.
    torch.manual_seed(0)
    decoder = Decoder(30, cell="lstm", feature_dim=64, embed_dim=16, hidden_dim=24, dropout=0.0)
    seen = []
    decoder.rnn.register_forward_hook(lambda module, args, out: seen.append(out[1][0].dtype))
    features, inputs = torch.randn(2, 64), torch.randint(1, 30, (2, 5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        evaluated = decoder.eval()(features, inputs)
        decoder.step(inputs[:, 0], decoder.initial_state(features))
        trained = decoder.train()(features, inputs)
    assert seen == [torch.float32, torch.float32, torch.bfloat16]
    torch.testing.assert_close(trained.float(), evaluated.float(), atol=0.05, rtol=0.05)
