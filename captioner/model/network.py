"""The captioning network: encoder (VGG fc7) + decoder (LSTM/GRU/RNN), built from a config.

A plain nn.Module, so inference loads it without Lightning; the LightningModule wraps it.
"""

from __future__ import annotations

from torch import Tensor, nn

from captioner.config import Config
from captioner.model.decoder import Decoder
from captioner.model.encoder import FEATURE_DIM, VGGEncoder, build_encoder


class CaptionModel(nn.Module):
    def __init__(self, encoder: VGGEncoder, decoder: Decoder) -> None:
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def forward(self, features: Tensor, inputs: Tensor, repeats: int = 1) -> Tensor:
        return self.decoder(features, inputs, repeats)


def build_model(config: Config, vocab_size: int, pad_id: int, *,
                encoder_weights: str = "none") -> CaptionModel:
    """`encoder_weights`: "none" (random; a checkpoint's state dict follows), "imagenet" or a .pth path."""
    d = config.decoder
    decoder = Decoder(vocab_size, cell=d.cell, feature_dim=FEATURE_DIM, embed_dim=d.embed_dim,
                      hidden_dim=d.hidden_dim, num_layers=d.num_layers, dropout=d.dropout,
                      pad_id=pad_id)
    encoder = build_encoder(config.encoder.arch, encoder_weights, seed=config.trainer.seed)
    return CaptionModel(encoder, decoder)
