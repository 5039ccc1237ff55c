"""The recurrent decoder: an image feature sets the initial state, then words follow one by one.

Show-and-tell in Karpathy's variant: the 4096-d fc7 feature does not enter as a first word but
through a linear layer into the initial hidden state (and, for the LSTM, the cell state), so
every cell type starts from the image and the input sequence is words only.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}

State = tuple[Tensor, ...]  # each [num_layers, batch, hidden], as torch's recurrent layers use


class Decoder(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        *,
        cell: str = "lstm",
        feature_dim: int = 4096,
        embed_dim: int = 512,
        hidden_dim: int = 512,
        num_layers: int = 1,
        dropout: float = 0.5,
        pad_id: int = 0,
    ) -> None:
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"decoder.cell must be one of {sorted(CELLS)}, got {cell!r}")
        self.cell, self.num_layers, self.hidden_dim = cell, num_layers, hidden_dim
        self.feature_dropout = nn.Dropout(dropout)
        self.init_h = nn.Linear(feature_dim, num_layers * hidden_dim)
        # Only the LSTM has a cell state; it is unbounded, so no tanh on it.
        self.init_c = nn.Linear(feature_dim, num_layers * hidden_dim) if cell == "lstm" else None
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.rnn = CELLS[cell](
            embed_dim, hidden_dim, num_layers, batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_dim, vocab_size)

    def initial_state(self, features: Tensor) -> State:
        """Map image features [B, feature_dim] to the recurrent state at t=0."""
        features = self.feature_dropout(features.float())
        batch = features.shape[0]

        def layers(x: Tensor) -> Tensor:
            return x.view(batch, self.num_layers, self.hidden_dim).transpose(0, 1).contiguous()

        h0 = layers(torch.tanh(self.init_h(features)))
        if self.init_c is None:
            return (h0,)
        return h0, layers(self.init_c(features))

    def _run(self, embedded: Tensor, state: State) -> tuple[Tensor, State]:
        # The decoder always runs in fp32: it is cheap next to the CNN, and bf16 autocast would
        # make captions depend on batch composition through kernel blocking.
        with torch.autocast(embedded.device.type, enabled=False):
            state = tuple(s.float() for s in state)  # built under autocast, maybe in bf16
            hx = state if self.cell == "lstm" else state[0]
            outputs, hx = self.rnn(embedded.float(), hx)
        return outputs, (tuple(hx) if self.cell == "lstm" else (hx,))

    def forward(self, features: Tensor, inputs: Tensor) -> Tensor:
        """Teacher forcing: features [B, F] and input ids [B, T] (<start> w1..wn) -> logits [B, T, V]."""
        outputs, _ = self._run(self.embed(inputs), self.initial_state(features))
        return self.out(self.dropout(outputs))

    def step(self, tokens: Tensor, state: State) -> tuple[Tensor, State]:
        """One decoding step for search: tokens [N] -> log-probabilities [N, V] and the new state."""
        outputs, state = self._run(self.embed(tokens).unsqueeze(1), state)
        return torch.log_softmax(self.out(outputs[:, 0]).float(), dim=-1), state
