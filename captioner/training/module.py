"""The LightningModule: teacher-forced cross-entropy, the optimiser and gradient clipping.

Two recipes, one module. encoder.mode=frozen (the default, and the COCO configs): batches carry
cached fc7 features and only the decoder trains. encoder.mode=finetune (neuraltalk2's second
stage): batches carry images and the CNN trains jointly, at its own learning rate.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.nn import functional as F
from torch.optim.lr_scheduler import LambdaLR

from captioner.config import Config, from_dict
from captioner.data.vocab import Vocabulary
from captioner.model.checkpoint import CheckpointMeta
from captioner.model.network import CaptionModel, build_model
from captioner.model.stored_encoder import PREFIX, StoredEncoder, strip
from captioner.training.adapters import clip_gradients
from captioner.training.schedule import cooldown
from captioner.training.trainer import stop_unless_finite
from captioner.training.validation import GreedyValidation
from captioner.version import __version__


def caption_loss(model: CaptionModel, features: Tensor, captions: Tensor, pad: int) -> Tensor:
    """Cross-entropy of each next word: captions [B, S, T] (S captions per image) hold
    <start> w1 .. wn <end>; the decoder reads <start> .. wn and must predict w1 .. <end>."""
    batch_size, per_image, length = captions.shape
    captions = captions.reshape(batch_size * per_image, length)
    logits = model(features, captions[:, :-1], repeats=per_image)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), captions[:, 1:].reshape(-1),
                           ignore_index=pad)


class CaptionModule(L.LightningModule):
    self_critical = False  # whether its checkpoints are marked as a self-critical run's

    def __init__(self, config: dict[str, Any], vocab: list[str], encoder_weights: str = "none",
                 captioner_version: str = __version__) -> None:
        """`encoder_weights`: "none", "imagenet" or a .pth path; a checkpoint's weights replace them."""
        super().__init__()
        # config and vocabulary travel inside every checkpoint, as plain (weights-only-safe) data.
        self.save_hyperparameters(ignore=["encoder_weights"])
        self.config: Config = from_dict(config)
        self.vocab = Vocabulary(vocab)
        self.model: CaptionModel = build_model(self.config, len(self.vocab), self.vocab.pad,
                                               encoder_weights=encoder_weights)
        self.finetune = self.config.encoder.mode == "finetune"
        # A frozen CNN stays in eval mode with no gradients: it only travels in the checkpoint.
        self.model.encoder.requires_grad_(self.finetune)
        self.model.encoder.to(memory_format=torch.channels_last)
        self.validation = GreedyValidation(self.vocab, self.config.eval.max_length)
        # Where a frozen run keeps its encoder: checkpoints then name this file, not the weights.
        self.stored_encoder: StoredEncoder | None = None

    def on_train_epoch_start(self) -> None:
        self.model.encoder.train(self.finetune)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        stored = self.stored_encoder if not self.finetune else None
        if stored is not None:
            strip(checkpoint)
        hparams = self.hparams
        meta = CheckpointMeta(hparams["config"], hparams["vocab"], hparams["captioner_version"],
                              encoder=None if stored is None else stored.record(),
                              self_critical=self.self_critical)
        checkpoint.update(meta.to_json())

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning restores the weights after this hook: a checkpoint that names its encoder file
        # gets the frozen encoder this module already holds (loaded from that file, hash checked).
        state = checkpoint["state_dict"]
        if not any(k.startswith(PREFIX) for k in state):
            state.update({PREFIX + k: v for k, v in self.model.encoder.state_dict().items()})

    def features(self, batch: dict) -> Tensor:
        """Cached fc7 vectors pass through; images go through the CNN (channels_last for speed)."""
        x = batch["input"]
        if x.dim() == 2:
            return x.float()
        return self.model.encoder(x.contiguous(memory_format=torch.channels_last)).float()

    def training_step(self, batch: dict | None, batch_idx: int) -> Tensor | None:
        if batch is None:  # every image of the batch was unreadable
            return None
        loss = caption_loss(self.model, self.features(batch), batch["captions"], self.vocab.pad)
        stop_unless_finite(self, loss, "training", "lower optim.lr or set optim.grad_clip")
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["image_id"]))
        return loss

    # -- validation -----------------------------------------------------------------------------
    def validation_step(self, batch: dict | None, batch_idx: int) -> None:
        if batch is None:
            return
        features = self.features(batch)
        loss = caption_loss(self.model, features, batch["captions"], self.vocab.pad)
        self.log("val/loss", loss, batch_size=len(batch["image_id"]), sync_dist=True)
        self.validation.add(self.model.decoder, features, batch["image_id"].tolist(), batch["references"])

    def on_validation_epoch_end(self) -> None:
        # Every rank computed the same numbers from the gathered captions: no further reduction.
        for name, value in self.validation.scores().items():
            self.log(f"val/{name}", value, prog_bar=name in ("bleu4", "cider"))

    # -- optimisation ---------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        # Named groups: the log's learning-rate columns read lr-Adam/decoder and lr-Adam/encoder.
        o, c = self.config.optim, self.config.encoder
        groups = [{"name": "decoder", "params": self.model.decoder.parameters(), "lr": o.lr,
                   "weight_decay": o.weight_decay}]
        if self.finetune:
            groups.append({"name": "encoder", "params": self.model.encoder.parameters(), "lr": c.lr,
                           "weight_decay": c.weight_decay})
        # The fused kernel updates VGG's ~130M weights in one pass (Lightning refuses its own
        # clipping with fused optimisers: training.adapters clips).
        optimizer = torch.optim.Adam(groups, fused=self.device.type in ("cpu", "cuda"))
        if o.cooldown <= 0:
            return optimizer
        schedule = LambdaLR(optimizer, cooldown(int(self.trainer.estimated_stepping_batches), o.cooldown))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer,
                                    gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        clip_gradients(self, optimizer, self.config.optim.grad_clip)  # why not Lightning's: adapters

