"""The decoder's recurrent layer unrolled one step at a time, from the layer's own weights.

torch's fused nn.LSTM / nn.GRU / nn.RNN return neither the hidden state of every step as a
separate graph node nor the gates, and comparing cells needs both: d(loss)/d(h_t) at every step
(does the gradient of a late word still reach the early ones?) and the gate activations along a
caption. The step functions below are PyTorch's documented cell equations (gate order: LSTM
i, f, g, o; GRU r, z, n) applied to `weight_ih_l{k}`, `weight_hh_l{k}` and the biases, and a
test holds them to the fused layer's outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from captioner.model.decoder import Decoder

# How many (W_ih, W_hh, b_ih, b_hh) sets each cell has: its gates plus the candidate state.
WEIGHT_SETS = {"lstm": 4, "gru": 3, "rnn": 1}
# The gates each step reports (all sigmoids, so in [0, 1]); the plain RNN has none.
GATES = {"lstm": ("input", "forget", "output"), "gru": ("update", "reset"), "rnn": ()}

Gates = dict[str, Tensor]
CellState = tuple[Tensor, ...]  # (h,) or, for the LSTM, (h, c); each [B, H]


@dataclass(frozen=True)
class LayerWeights:
    w_ih: Tensor
    w_hh: Tensor
    b_ih: Tensor | None
    b_hh: Tensor | None


def layer_weights(rnn: nn.RNNBase, layer: int) -> LayerWeights:
    return LayerWeights(getattr(rnn, f"weight_ih_l{layer}"), getattr(rnn, f"weight_hh_l{layer}"),
                        getattr(rnn, f"bias_ih_l{layer}", None), getattr(rnn, f"bias_hh_l{layer}", None))


def lstm_step(x: Tensor, state: CellState, w: LayerWeights) -> tuple[CellState, Gates]:
    h, c = state
    i, f, g, o = (F.linear(x, w.w_ih, w.b_ih) + F.linear(h, w.w_hh, w.b_hh)).chunk(4, dim=-1)
    i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
    # The cell state is updated additively (f * c): the path the gradient travels back on.
    c = f * c + i * g
    return (o * c.tanh(), c), {"input": i, "forget": f, "output": o}


def gru_step(x: Tensor, state: CellState, w: LayerWeights) -> tuple[CellState, Gates]:
    (h,) = state
    x_r, x_z, x_n = F.linear(x, w.w_ih, w.b_ih).chunk(3, dim=-1)
    h_r, h_z, h_n = F.linear(h, w.w_hh, w.b_hh).chunk(3, dim=-1)
    r, z = (x_r + h_r).sigmoid(), (x_z + h_z).sigmoid()
    # PyTorch applies the reset gate to W_hn h + b_hn (the bias included), not to h alone.
    n = (x_n + r * h_n).tanh()
    return ((1 - z) * n + z * h,), {"update": z, "reset": r}


def rnn_step(x: Tensor, state: CellState, w: LayerWeights) -> tuple[CellState, Gates]:
    (h,) = state
    return ((F.linear(x, w.w_ih, w.b_ih) + F.linear(h, w.w_hh, w.b_hh)).tanh(),), {}


STEPS: dict[str, Callable[[Tensor, CellState, LayerWeights], tuple[CellState, Gates]]] = {
    "lstm": lstm_step, "gru": gru_step, "rnn": rnn_step,
}


@dataclass
class Unrolled:
    initial: tuple[Tensor, ...]  # the state the image sets, (h0,) or (h0, c0), each [layers, B, H]
    hidden: list[Tensor]  # the top layer's h_t for every step t, each [B, H]: graph nodes
    logits: Tensor  # [B, T, V]
    gates: dict[str, Tensor]  # the top layer's gates, each [B, T, H]


def unroll(decoder: Decoder, features: Tensor, inputs: Tensor) -> Unrolled:
    """Teacher forcing, step by step: equals `decoder(features, inputs)` with dropout off.

    Each h_t feeds both its step's output and the next step, so the gradient that reaches it
    is the whole of d(loss)/d(h_t), the part that came back through time included.
    """
    if decoder.cell == "rnn" and decoder.rnn.nonlinearity != "tanh":
        raise ValueError("unroll follows the tanh RNN only")
    step = STEPS[decoder.cell]
    initial = decoder.initial_state(features.float())
    states = [tuple(s[k] for s in initial) for k in range(decoder.num_layers)]
    weights = [layer_weights(decoder.rnn, k) for k in range(decoder.num_layers)]
    embedded = decoder.embed(inputs).float()
    hidden: list[Tensor] = []
    gates: list[Gates] = []
    for t in range(inputs.shape[1]):
        x = embedded[:, t]
        for k in range(decoder.num_layers):
            states[k], step_gates = step(x, states[k], weights[k])
            x = states[k][0]
        hidden.append(x)
        gates.append(step_gates)
    logits = decoder.out(decoder.dropout(torch.stack(hidden, dim=1)))
    return Unrolled(initial, hidden, logits,
                    {name: torch.stack([g[name] for g in gates], dim=1) for name in GATES[decoder.cell]})


def hidden_gradient_norms(decoder: Decoder, features: Tensor, inputs: Tensor, targets: Tensor) -> list[float]:
    """‖d loss / d h_t‖ for every step t, averaged over the captions of the batch.

    The loss is the cross-entropy of each caption's last target word only: at the last step the
    gradient is that word's own, and at every earlier step it is purely what travelled back
    through time, so the curve shows how fast each cell forgets (vanishing gradients). Measured
    in eval mode (no dropout), so two measurements of the same weights agree.
    """
    with _measuring(decoder):
        run = unroll(decoder, features, inputs)
        # Summed, not averaged: each caption's gradient is that of its own loss.
        loss = F.cross_entropy(run.logits[:, -1].float(), targets[:, -1], reduction="sum")
        grads = torch.autograd.grad(loss, run.hidden)
    return [g.norm(dim=-1).mean().item() for g in grads]


def initial_state_gradient_norms(decoder: Decoder, features: Tensor, inputs: Tensor,
                                 targets: Tensor) -> list[float]:
    """‖d loss_t / d s_0‖ for every step t, averaged over the captions of the batch.

    loss_t is the cross-entropy of word t alone and s_0 the whole initial state the image sets
    (every layer's h0, and the LSTM's c0 too): the image reaches the words only through s_0, so
    this is how much of each word's error gets back to the image. Eval mode, as above.
    """
    with _measuring(decoder):
        run = unroll(decoder, features, inputs)
        # [B, T]; captions are independent, so the sum over the batch keeps each one's gradient.
        losses = F.cross_entropy(run.logits.float().transpose(1, 2), targets, reduction="none")
        norms = []
        for t in range(losses.shape[1]):
            grads = torch.autograd.grad(losses[:, t].sum(), run.initial, retain_graph=True)
            per_caption = torch.cat([g.transpose(0, 1).flatten(1) for g in grads], dim=1)
            norms.append(per_caption.norm(dim=-1).mean().item())
    return norms


@contextmanager
def _measuring(decoder: Decoder) -> Iterator[None]:
    """Gradients on, dropout off, and the decoder's mode restored afterwards."""
    training = decoder.training
    decoder.eval()
    try:
        with torch.enable_grad():
            yield
    finally:
        decoder.train(training)


@torch.no_grad()
def gate_trace(decoder: Decoder, features: Tensor, inputs: Tensor) -> dict[str, Tensor]:
    """The top layer's gates [T, H] of one caption (features [F], input ids [T]), dropout off."""
    training = decoder.training
    decoder.eval()
    try:
        run = unroll(decoder, features.unsqueeze(0), inputs.unsqueeze(0))
    finally:
        decoder.train(training)
    return {name: values[0] for name, values in run.gates.items()}


def parameter_counts(decoder: Decoder) -> dict[str, int]:
    """All the decoder's weights, those of its recurrent layer, and the layer's weight sets."""
    return {
        "params": sum(p.numel() for p in decoder.parameters()),
        "recurrent_params": sum(p.numel() for p in decoder.rnn.parameters()),
        "weight_sets": decoder.rnn.weight_hh_l0.shape[0] // decoder.hidden_dim,
    }
