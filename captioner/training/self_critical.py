"""Self-critical sequence training (Rennie et al., CVPR 2017): REINFORCE on CIDEr-D, with a baseline.

A cross-entropy model is fine-tuned to maximise the expected reward r(w) of its own captions: for
each training image it samples `scst.samples` captions w_i from the batched decoder, scores them
against the image's training references (captioner.evaluation.cider_reward: CIDEr-D, optionally
mixed with BLEU-4) and minimises

    L = -(1/N) sum_i (r(w_i) - b_i) sum_t log p(w_i,t | w_i,<t, image)

over the N samples of the batch, whose gradient is the REINFORCE estimate of -grad E[r] (the
baseline b_i, which does not depend on w_i, only lowers its variance). b_i is the reward of the
model's own greedy caption of that image (Rennie et al.'s "self-critical" baseline) or the mean
reward of the image's other samples (scst.baseline=mean, ruotianluo's later variant).

The greedy baselines and the samples come from one batched decoder run under inference mode
(`rollout`), their words stay tensors, and one reward call scores them all. Samples are drawn
with dropout off, and the log-probabilities are recomputed in one teacher-forced
pass over the sampled words, also with dropout off: both then come from the same distribution, so
the gradient is on-policy, and the pass is the fast packed one cross-entropy training uses. Both
run at cross-entropy's precision (bf16 autocast where the trainer enables it), not in the fp32
that evaluation decodes in.
Validation, checkpoints and resuming are CaptionModule's; best.ckpt is picked by val/cider.

With a greedy baseline most samples score below it, so most of the gradient pushes sampled words
down; on low-entropy captions that can tip a long run into a collapse it does not recover from
(docs/self-critical.md, "Longer runs"). `CollapseStop` ends such a run: best.ckpt already holds
its best epoch, from before the fall.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch import Tensor

from captioner.config import Config
from captioner.errors import CaptionerError
from captioner.evaluation.cider_reward import CaptionRewards
from captioner.evaluation.mentions import ObjectIndex
from captioner.model.decoder import State
from captioner.model.search import Step
from captioner.training.adapters import RunCheckpoints
from captioner.training.module import CaptionModule
from captioner.util.console import warn
from captioner.version import __version__

MONITOR = "val/cider"


def check(config: Config) -> None:
    """Refuse self-critical settings that cannot work together (before anything loads)."""
    s = config.scst
    if s.baseline == "mean" and s.samples < 2:
        raise CaptionerError("bad configuration: scst.baseline=mean needs scst.samples of at least 2")
    if s.cider_weight + s.bleu_weight + s.object_weight <= 0:
        raise CaptionerError("bad configuration: scst.cider_weight, scst.bleu_weight and "
                             "scst.object_weight are all 0: nothing to reward")


def object_f1(objects: ObjectIndex, vocab: Sequence[str], image_ids: Tensor, tokens: Tensor,
              lengths: Tensor) -> Tensor:
    """F1 of the objects each caption names against its image's annotated objects, float32 [N]
    (tokens [N, T], the first lengths[i] ids of row i its words): 1 where there is nothing to
    name and nothing is named, 0 for an image the annotations do not cover (no signal)."""
    f1 = []
    for image_id, row, n in zip(image_ids.tolist(), tokens.tolist(), lengths.tolist()):
        if not objects.covers(image_id):
            f1.append(0.0)
            continue
        named = objects.objects_in_caption([vocab[i] for i in row[:n]])
        present = objects.objects_in_image(image_id)
        f1.append(2 * len(named & present) / (len(named) + len(present)) if named or present else 1.0)
    return torch.tensor(f1, dtype=torch.float32)


def policy_gradient_loss(logits: Tensor, targets: Tensor, advantage: Tensor,
                         pad: int) -> tuple[Tensor, Tensor]:
    """The REINFORCE loss -(1/N) sum_i A_i sum_t log p(target_i,t) and the policy's mean entropy
    per word, of logits [N, T, V] of N sampled captions whose words (and end token, if emitted) are
    targets [N, T], padded with `pad`; advantage [N] = reward - baseline, a constant."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    taken = log_probs.gather(2, targets.unsqueeze(2)).squeeze(2)
    words = targets != pad
    loss = -(advantage.detach().to(taken.dtype) * (taken * words).sum(1)).mean()
    with torch.no_grad():
        entropy = -(log_probs.exp() * log_probs).sum(-1)[words].mean()
    return loss, entropy


@dataclass(frozen=True)
class Episode:
    """One batch's samples: what the decoder reads and must predict, and their rewards."""

    inputs: Tensor  # [N, T] <start> w1 .. (padded)
    targets: Tensor  # [N, T] w1 .. <end> (padded; no <end> for a caption cut at max_length)
    reward: Tensor  # [N] float32
    baseline: Tensor  # [N] float32


@dataclass(frozen=True)
class Rollout:
    """Captions decoded as tensors: no per-caption Python objects between the decoder, the
    reward and the teacher-forced pass."""

    tokens: Tensor  # [N, T] the chosen ids; <end>, then <end> again, once a caption has ended
    lengths: Tensor  # [N] words before <end> (T for a caption cut at max_length)
    finished: Tensor  # [N] bool: <end> was emitted


@torch.inference_mode()
def rollout(step: Step, state: State, greedy_rows: int, *, bos: int, eos: int, max_length: int,
            banned: Sequence[int] = ()) -> Rollout:
    """Decode all rows of `state` in one batched run: the first `greedy_rows` greedily (the
    lower id on a tie, as captioner.model.search.greedy), the others sampled from the model's
    distribution. One run for the greedy baselines and the samples halves the decoder calls
    that two runs would make; it stops when every row has ended."""
    rows, device = state[0].shape[1], state[0].device
    tokens = torch.full((rows,), bos, dtype=torch.long, device=device)
    ended = torch.zeros(rows, dtype=torch.bool, device=device)
    ban = torch.tensor(list(banned), dtype=torch.long, device=device)
    chosen = []
    for _ in range(max_length):
        log_probs, state = step(tokens, state)
        log_probs = log_probs.index_fill(1, ban, float("-inf")) if len(ban) else log_probs
        picks = log_probs[:greedy_rows].argmax(1)
        if greedy_rows < rows:
            drawn = torch.multinomial(log_probs[greedy_rows:].softmax(1), 1)[:, 0]
            picks = torch.cat([picks, drawn])
        tokens = picks.masked_fill(ended, eos)
        chosen.append(tokens)
        ended |= tokens == eos
        if bool(ended.all()):
            break
    ids = torch.stack(chosen, 1)
    is_end = ids == eos
    lengths = torch.where(ended, is_end.int().argmax(1), ids.shape[1])
    return Rollout(ids, lengths, ended)


def teacher_forcing(captions: Rollout, start: int, pad: int) -> tuple[Tensor, Tensor]:
    """Inputs and targets [N, T] that make the decoder replay these captions: targets are the
    words and <end> (if emitted), inputs <start> and the words, both padded with `pad`."""
    steps = captions.lengths + captions.finished.long()  # what each caption has the decoder predict
    width = int(steps.max())
    kept = torch.arange(width, device=steps.device).unsqueeze(0) < steps.unsqueeze(1)
    targets = captions.tokens[:, :width].masked_fill(~kept, pad)
    inputs = torch.cat([torch.full_like(targets[:, :1], start), targets[:, :-1]], 1).masked_fill(~kept, pad)
    return inputs, targets


class CollapseStop(L.Callback):
    """Stop once validation CIDEr-D falls below `share` of the best so far (0: never): a collapse,
    not the epoch-to-epoch noise of a plateau. The best is the one best.ckpt holds, RunCheckpoints'
    (updated after this check, kept in checkpoints, restored on resume). `advice` ends the line
    that says so."""

    def __init__(self, share: float, advice: str = "") -> None:
        self.share, self.advice = share, advice
        self.stopped: str | None = None

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        kept, value = trainer.checkpoint_callback, trainer.callback_metrics.get(MONITOR)
        best = kept.best if isinstance(kept, RunCheckpoints) and kept.monitor == MONITOR else None
        if trainer.sanity_checking or self.share <= 0 or value is None or best is None:
            return
        value = float(value)  # NaN compares False: no stop
        # Every rank scored the same gathered captions; agreeing keeps them stopping together.
        if trainer.strategy.reduce_boolean_decision(value < self.share * best, all=False):
            trainer.should_stop = True
            self.stopped = (f"self-critical training stopped after epoch {trainer.current_epoch + 1} of "
                            f"{trainer.max_epochs}: validation CIDEr-D {value:.3f} is below {self.share:g} x "
                            f"its best ({best:.3f}, epoch {kept.best_epoch + 1}), a collapsed policy; "
                            f"best.ckpt keeps the best epoch. {self.advice}scst.stop_below=0 trains on "
                            f"regardless")

    def on_fit_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.stopped and trainer.is_global_zero:
            warn(self.stopped)


class SelfCriticalModule(CaptionModule):
    """CaptionModule trained by self-critical policy gradient instead of cross-entropy.

    `rewards` (the training references, document frequencies counted once) is set before fit."""

    self_critical = True  # its checkpoints say so: resuming one continues self-critically

    def __init__(self, config: dict[str, Any], vocab: list[str], encoder_weights: str = "none",
                 captioner_version: str = __version__) -> None:
        super().__init__(config, vocab, encoder_weights, captioner_version)
        # Only the decoder learns from the reward; a fine-tuned CNN stays where cross-entropy left it.
        self.finetune = False
        self.model.encoder.requires_grad_(False)
        self.rewards: CaptionRewards | None = None
        self.objects: ObjectIndex | None = None  # the annotated objects, where scst.object_weight > 0

    def training_step(self, batch: dict | None, batch_idx: int) -> Tensor | None:
        if batch is None:
            return None
        # Dropout off, so sampling and the gradient share one policy, at cross-entropy's precision.
        self.model.decoder.train_without_dropout()
        features = self.features(batch)
        episode = self.episode(features, batch["image_id"])
        logits = self.model(features, episode.inputs.to(self.device), repeats=self.config.scst.samples)
        advantage = (episode.reward - episode.baseline).to(self.device)
        loss, entropy = policy_gradient_loss(logits, episode.targets.to(self.device), advantage,
                                             self.vocab.pad)
        images = len(batch["image_id"])
        self.log("train/loss", loss, prog_bar=True, batch_size=images)
        self.log("train/reward", episode.reward.mean(), prog_bar=True, batch_size=images)
        self.log("train/baseline", episode.baseline.mean(), batch_size=images)
        self.log("train/entropy", entropy, batch_size=images)
        return loss

    @torch.no_grad()
    def episode(self, features: Tensor, image_ids: Tensor) -> Episode:
        """Sample scst.samples captions of each image and decode its greedy baseline, in one
        batched decoder run, and score them all in one reward call."""
        decoder, v, s = self.model.decoder, self.vocab, self.config.scst
        state = decoder.initial_state(features)
        greedy_rows = len(image_ids) if s.baseline == "greedy" else 0
        rows = tuple(torch.cat([x[:, :greedy_rows], x.repeat_interleave(s.samples, dim=1)], 1)
                     for x in state)
        captions = rollout(decoder.step, rows, greedy_rows, bos=v.start, eos=v.end,
                           max_length=self.config.eval.max_length, banned=(v.pad, v.start))
        ids = torch.cat([image_ids[:greedy_rows], image_ids.repeat_interleave(s.samples)])
        scores = self.reward(ids, captions.tokens, captions.lengths)
        reward = scores[greedy_rows:]
        if greedy_rows:
            baseline = scores[:greedy_rows].repeat_interleave(s.samples)
        else:  # the mean of the image's other samples
            grouped = reward.view(-1, s.samples)
            baseline = ((grouped.sum(1, keepdim=True) - grouped) / (s.samples - 1)).view(-1)
        sampled = Rollout(captions.tokens[greedy_rows:], captions.lengths[greedy_rows:],
                          captions.finished[greedy_rows:])
        inputs, targets = teacher_forcing(sampled, v.start, v.pad)
        # Made outside inference mode (rollout's are inference tensors): autograd may save them.
        return Episode(inputs, targets, reward, baseline)

    def reward(self, image_ids: Tensor, tokens: Tensor, lengths: Tensor) -> Tensor:
        """scst.cider_weight * CIDEr-D + scst.bleu_weight * BLEU-4 + scst.object_weight * object F1
        of captions [N, T] of these images (the first lengths[i] ids of row i are its words),
        float32 [N]."""
        if self.rewards is None:
            raise RuntimeError("SelfCriticalModule.rewards must be set before training")
        s = self.config.scst
        scores = self.rewards(image_ids, tokens, lengths)
        reward = (s.cider_weight * scores.cider + s.bleu_weight * scores.bleu4).float()
        if s.object_weight > 0:
            if self.objects is None:
                raise RuntimeError("SelfCriticalModule.objects must be set when scst.object_weight > 0")
            f1 = object_f1(self.objects, self.vocab.words, image_ids, tokens, lengths)
            reward = reward + s.object_weight * f1.to(reward.device)
        return reward

    def configure_optimizers(self) -> Any:
        o = self.config.optim
        return torch.optim.Adam(self.model.decoder.parameters(), lr=self.config.scst.lr,
                                weight_decay=o.weight_decay, fused=self.device.type in ("cpu", "cuda"))
