"""The LightningModule: teacher-forced cross-entropy for training, greedy captions for validation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn import functional as F
from torch.optim.lr_scheduler import LambdaLR

from captioner import __version__
from captioner.config import Config, from_dict
from captioner.data.vocab import Vocabulary
from captioner.encoder import FEATURE_DIM
from captioner.metrics import bleu_scores, cider_d
from captioner.model import CaptionModel, build_model
from captioner.schedule import one_cycle
from captioner.search import greedy


class CaptionModule(L.LightningModule):
    def __init__(self, config: dict[str, Any], vocab: list[str], pretrained: bool = True,
                 captioner_version: str = __version__, concepts: list[str] | None = None) -> None:
        super().__init__()
        # config and vocabulary travel inside every checkpoint, as plain (weights-only-safe) data.
        self.save_hyperparameters(ignore=["pretrained"])
        self.config: Config = from_dict(config)
        self.vocab = Vocabulary(vocab)
        self.model: CaptionModel = build_model(self.config, len(self.vocab), self.vocab.pad,
                                               pretrained=pretrained)
        self.finetune = self.config.encoder.mode == "finetune"
        # Training-only auxiliary head on fc7 (captioner.concepts): not part of the captioning
        # model, so inference never needs it; useless on frozen features, so only when fine-tuning.
        self.concept_head = None
        if self.finetune and self.config.optim.concept_weight > 0 and concepts:
            self.concept_head = nn.Linear(FEATURE_DIM, len(concepts))
        self._set_encoder_training(self.finetune)
        self.model.encoder.to(memory_format=torch.channels_last)
        self._predictions: list[tuple[int, list[str], list[list[str]]]] = []
        self._fc7: dict[int, Tensor] = {}  # image id -> fc7 once the CNN is frozen (features())

    # -- features -------------------------------------------------------------------------------
    def features(self, batch: dict) -> Tensor:
        """Cached fc7 vectors pass through; images go through the CNN (channels_last for speed)."""
        x = batch["input"]
        if x is not None and x.dim() == 2:
            return x.float()
        if self.finetune and not self._encoder_trains():
            return self._frozen_features(batch)
        return self._encode(x)

    def remembers(self, image_ids: Sequence[int]) -> bool:
        """Whether features() has every one of these images' fc7 (so needs no image)."""
        return self.finetune and not self._encoder_trains() and all(i in self._fc7 for i in image_ids)

    def _encode(self, images: Tensor) -> Tensor:
        return self.model.encoder(images.contiguous(memory_format=torch.channels_last)).float()

    def _frozen_features(self, batch: dict) -> Tensor:
        """fc7 of a CNN that has stopped training, computed once per image and then remembered.

        After encoder.freeze_after_epoch the CNN's output no longer changes (eval mode, fixed
        weights), so later epochs train the decoder alone, at about a third of a joint epoch's
        cost (~15 s against ~50 s on the shapes default, 2 CPU cores). Kept in float16, like the
        on-disk feature cache, and never saved in checkpoints.
        """
        ids = batch["image_id"].tolist()
        new = [k for k, image_id in enumerate(ids) if image_id not in self._fc7]
        if new and batch["input"] is None:  # DecoderOnlyBatches only stops loading what we have
            raise RuntimeError(f"no image and no remembered features for image {ids[new[0]]}")
        if new:
            with torch.no_grad():
                computed = self._encode(batch["input"][new]).to("cpu", torch.float16)
            self._fc7.update(zip((ids[k] for k in new), computed))
        with torch.autocast(self.device.type, enabled=False):  # CPU autocast rejects float16 here
            return torch.stack([self._fc7[i] for i in ids]).to(self.device).float()

    def _encoder_trains(self) -> bool:
        after = self.config.encoder.freeze_after_epoch
        return self.finetune and (after < 0 or self.current_epoch < after)

    def on_train_epoch_start(self) -> None:
        # A frozen CNN stays in eval mode: batch-norm statistics and dropout must not move.
        self._set_encoder_training(self._encoder_trains())

    def _set_encoder_training(self, trains: bool) -> None:
        encoder = self.model.encoder
        fc_trains = trains and self.config.encoder.fc_lr > 0
        encoder.train(trains)
        encoder.features.requires_grad_(trains)
        # encoder.fc_lr=0 keeps fc6/fc7 fixed: no gradients or Adam state for their 118M weights,
        # and no dropout between them (fixed layers cannot learn to be robust to it; it would
        # only add noise to the feature the decoder reads).
        encoder.fc.requires_grad_(fc_trains)
        encoder.fc.train(fc_trains)

    # -- training -------------------------------------------------------------------------------
    def _loss(self, batch: dict, features: Tensor) -> Tensor:
        captions = batch["captions"]  # [B, S, T]: S captions of each image
        batch_size, per_image, length = captions.shape
        captions = captions.reshape(batch_size * per_image, length)
        logits = self.model(features, captions[:, :-1], repeats=per_image)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), captions[:, 1:].reshape(-1),
                               ignore_index=self.vocab.pad)

    def _concept_loss(self, batch: dict, features: Tensor) -> Tensor:
        """Which visual concepts do this image's captions name? A direct signal for the CNN."""
        logits = self.concept_head(features.float())
        return F.binary_cross_entropy_with_logits(logits, batch["concepts"].to(logits.dtype))

    def training_step(self, batch: dict | None, batch_idx: int) -> Tensor | None:
        if batch is None:  # every image of the batch was unreadable
            return None
        features = self.features(batch)
        loss = self._loss(batch, features)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["image_id"]))
        if self.concept_head is not None and self._encoder_trains():  # its only job is the CNN's
            concept = self._concept_loss(batch, features)
            self.log("train/concept_loss", concept, batch_size=len(batch["image_id"]))
            loss = loss + self.config.optim.concept_weight * concept
        return loss

    # -- validation -----------------------------------------------------------------------------
    def validation_step(self, batch: dict | None, batch_idx: int) -> None:
        if batch is None:
            return
        features = self.features(batch)
        self.log("val/loss", self._loss(batch, features), batch_size=len(batch["image_id"]), sync_dist=True)
        hypotheses = greedy(self.model.decoder.step, self.model.decoder.initial_state(features),
                            bos=self.vocab.start, eos=self.vocab.end,
                            max_length=self.config.eval.max_length,
                            banned=(self.vocab.pad, self.vocab.start))
        for image_id, hyp, refs in zip(batch["image_id"].tolist(), hypotheses, batch["references"]):
            self._predictions.append((image_id, self.vocab.decode(hyp.tokens), refs))

    def on_validation_epoch_end(self) -> None:
        predictions = _gather(self._predictions)
        self._predictions = []
        if not predictions:
            return
        references = {i: refs for i, _, refs in predictions}
        hypotheses = {i: words for i, words, _ in predictions}
        bleu = bleu_scores(references, hypotheses)
        cider, _ = cider_d({i: [" ".join(r) for r in refs] for i, refs in references.items()},
                           {i: " ".join(words) for i, words in hypotheses.items()})
        distinct = len({" ".join(w) for w in hypotheses.values()}) / len(hypotheses)
        # Every rank computed the same numbers from the gathered set: no further reduction.
        self.log("val/bleu4", bleu["bleu4"], prog_bar=True)
        self.log("val/bleu1", bleu["bleu1"])
        self.log("val/cider", cider, prog_bar=True)
        self.log("val/distinct", distinct)
        self.log("val/images", float(len(hypotheses)))  # each image once, however many ranks

    # -- optimisation ---------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        # Named groups: the CSV log's learning-rate columns read lr-Adam/decoder, lr-Adam/convs, ...
        o = self.config.optim
        groups = [{"name": "decoder", "params": self.model.decoder.parameters(), "lr": o.lr,
                   "weight_decay": o.weight_decay}]
        if self.concept_head is not None:
            groups.append({"name": "concepts", "params": self.concept_head.parameters(), "lr": o.lr})
        if self.finetune:
            encoder, c = self.model.encoder, self.config.encoder
            groups.append({"name": "convs", "params": encoder.features.parameters(), "lr": c.lr,
                           "weight_decay": c.weight_decay})
            if c.fc_lr > 0:
                groups.append({"name": "fc", "params": encoder.fc.parameters(), "lr": c.fc_lr,
                               "weight_decay": c.weight_decay})
        # The fused kernel updates VGG's ~130M weights in one pass: several times faster on CPU.
        # (Lightning refuses its own clipping with fused optimisers; we clip ourselves, below.)
        optimizer = torch.optim.Adam(groups, fused=self.device.type in ("cpu", "cuda"))
        if o.schedule == "constant":
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        # The CNN's groups run their cycle within its fine-tuning window, so that their rate has
        # annealed by the time it freezes; the decoder's spans the whole run, and holds its peak
        # after warm-up (unless optim.anneal_decoder) until its optim.decoder_cooldown.
        after = self.config.encoder.freeze_after_epoch
        window = total * after // self.trainer.max_epochs if 0 < after < self.trainer.max_epochs else total
        cycles = [one_cycle(total, o.warmup, anneal=o.anneal_decoder, cooldown=o.decoder_cooldown)
                  if g["name"] == "decoder"
                  else one_cycle(window, o.warmup) for g in groups]
        schedule = LambdaLR(optimizer, cycles)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer,
                                    gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        # Clip by global norm ourselves (Lightning has unscaled AMP gradients by now) so that the
        # norm and whether clipping engaged are logged: the exploding-gradient half of the story.
        limit = self.config.optim.grad_clip
        if limit <= 0:
            return
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm=limit)
        self.log("train/grad_norm", norm, on_step=True, on_epoch=False, batch_size=1)
        self.log("train/clipped", (norm > limit).float(), on_step=False, on_epoch=True, batch_size=1)


def _gather(items: list) -> list:
    """All ranks' predictions, each image once (DistributedSampler pads by repeating images)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts: list[list] = [[] for _ in range(dist.get_world_size())]
        dist.all_gather_object(parts, items)
        items = [item for part in parts for item in part]
    unique = {item[0]: item for item in items}
    return [unique[k] for k in sorted(unique)]
