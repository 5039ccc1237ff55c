"""The recurrent decoder: an image feature sets the initial state, then words follow one by one.

Show-and-tell in Karpathy's variant: the 4096-d fc7 feature does not enter as a first word but
through a linear layer into the initial hidden state (and, for the LSTM, the cell state), so
every cell type starts from the image and the input sequence is words only.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}

State = tuple[Tensor, ...]  # each [num_layers, batch, hidden], as torch's recurrent layers use


class Dropout(nn.Dropout):
    """nn.Dropout drawing its mask by comparing uniform numbers with the keep rate, which on CPUs
    is faster than the Bernoulli sampling torch uses, a visible share of a small decoder's step."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        keep = 1.0 - self.p
        return x * (torch.rand(x.shape, device=x.device) < keep).to(x.dtype) / keep


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
        self.cell, self.num_layers, self.hidden_dim, self.pad_id = cell, num_layers, hidden_dim, pad_id
        self.feature_dropout = Dropout(dropout)
        self.init_h = nn.Linear(feature_dim, num_layers * hidden_dim)
        # Only the LSTM has a cell state; it is unbounded, so no tanh on it.
        self.init_c = nn.Linear(feature_dim, num_layers * hidden_dim) if cell == "lstm" else None
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.rnn = CELLS[cell](
            embed_dim, hidden_dim, num_layers, batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.dropout = Dropout(dropout)
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

    def train_without_dropout(self) -> Decoder:
        """Training mode with every dropout off (the recurrent layer's between layers too): the
        recurrent pass runs at training precision, under the trainer's bf16 autocast where it is
        enabled, as cross-entropy's does, and deterministically. Self-critical training samples
        its captions and takes their gradient in this mode, so both come from one policy."""
        self.train()
        for child in self.children():
            child.eval()
        return self

    def _run(self, embedded: Tensor | PackedSequence, state: State) -> tuple[Tensor | PackedSequence, State]:
        hx = state if self.cell == "lstm" else state[0]
        if self.training:
            # Training tolerates the noise of bf16 autocast (where the trainer enables it): the
            # recurrent matrix products run faster on CPUs with bf16 units.
            outputs, hx = self.rnn(embedded, hx)
        else:
            # Captions run in fp32: bf16 kernels' blocking would make them depend on batch composition.
            with torch.autocast(state[0].device.type, enabled=False):
                hx = tuple(s.float() for s in hx) if self.cell == "lstm" else hx.float()
                outputs, hx = self.rnn(embedded.float(), hx)
        return outputs, (tuple(hx) if self.cell == "lstm" else (hx,))

    def forward(self, features: Tensor, inputs: Tensor, repeats: int = 1) -> Tensor:
        """Teacher forcing: features [B, F] and input ids [B * repeats, T] -> logits [B * repeats, T, V].

        Inputs are <start> w1..wn, padded with pad_id; each image's feature serves `repeats`
        consecutive captions, so its initial state is computed once. The recurrent layer runs on a
        packed batch, skipping the padding (a third of the steps for captions of mixed lengths);
        logits at padded positions come from zero outputs and are for the loss to ignore.
        """
        state = tuple(s.repeat_interleave(repeats, dim=1) for s in self.initial_state(features))
        trailing_pads = (inputs != self.pad_id).flip(1).int().argmax(1)  # 0 where none (or all pad)
        lengths = (inputs.shape[1] - trailing_pads).cpu()
        packed = pack_padded_sequence(self.embed(inputs), lengths, batch_first=True, enforce_sorted=False)
        outputs, _ = self._run(packed, state)
        outputs, _ = pad_packed_sequence(outputs, batch_first=True, total_length=inputs.shape[1])
        return self.out(self.dropout(outputs))

    def step(self, tokens: Tensor, state: State) -> tuple[Tensor, State]:
        """One decoding step for search: tokens [N] -> log-probabilities [N, V] and the new state."""
        outputs, state = self._run(self.embed(tokens).unsqueeze(1), state)
        return torch.log_softmax(self.out(outputs[:, 0]).float(), dim=-1), state
