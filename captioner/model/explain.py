"""Per-word Grad-CAM (Selvaraju et al. 2017): which image regions drove each word of a caption.

For word t of a caption, the gradient of log p(w_t | image, w_1..w_t-1) with respect to A, the
last convolutional feature map (the last conv block's ReLU output, before VGG's final max-pool),
is averaged over space per channel; the word's map is ReLU(sum_c weight_c * A_c), divided by its
maximum. A map of all zeros means no location's features, weighted so, raised the word's
log-probability: Grad-CAM has nothing to show for that word, which is not "the image does not
matter".

The words are teacher-forced: an explanation is of exactly the caption it is given (the
Captioner's own), never of a re-decoded one, and explaining changes nothing in the model.
The convolutions below A run once without gradients; only fc6, fc7 and the decoder are
recorded, and the N x T per-word gradients are taken in two batched backward passes.

    results = captioner.caption(paths)
    for explanation in captioner.explain(paths, results):  # Captioner.explainer()'s maps
        ...  # explanation.words, explanation.maps [T, h, w]; see captioner.model.explain_files
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from captioner.data.vocab import Vocabulary
from captioner.errors import CaptionerError
from captioner.model.encoder import VGGEncoder
from captioner.model.network import CaptionModel


@dataclass(frozen=True)
class Explanation:
    """Grad-CAM maps for one caption, one per word."""

    words: tuple[str, ...]
    maps: np.ndarray  # [T, h, w] float32 in [0, 1] on the conv grid; all zeros: nothing to show
    logprobs: np.ndarray  # [T] float32: log p(word | image, earlier words), computed in fp32
    view: np.ndarray  # [H, W, 3] uint8: the image as the model saw it (resized, centre-cropped)

    def upsampled(self, size: tuple[int, int] | None = None) -> np.ndarray:
        """The maps [T, H, W] stretched bilinearly to `size` (default: the view's), in [0, 1]."""
        return upsample(self.maps, size or self.view.shape[:2])

    def peaks(self) -> list[tuple[float, float] | None]:
        """Each word's pointing location: the centre (x, y) of its map's highest grid cell, in
        view pixels (bilinear upsampling peaks there too); None where the map is all zeros."""
        _, h, w = self.maps.shape
        cell_h, cell_w = self.view.shape[0] / h, self.view.shape[1] / w
        peaks: list[tuple[float, float] | None] = []
        for word_map in self.maps:
            if not word_map.any():
                peaks.append(None)
                continue
            row, col = divmod(int(word_map.argmax()), w)
            peaks.append(((col + 0.5) * cell_w, (row + 0.5) * cell_h))
        return peaks


class Explainer:
    """Grad-CAM for a caption model; build it once (it keeps the encoder split in two).

    It is given what it uses and nothing more: the model, its vocabulary (to teacher-force the
    words), the device, and the preprocessing the images went through (whose ImageNet mean and
    std turn them back into the view an overlay is drawn on). Captioner.explainer() builds one.
    """

    def __init__(self, model: CaptionModel, vocab: Vocabulary, device: torch.device,
                 preprocess: Callable[..., Tensor]) -> None:
        self.model, self.vocab, self.device, self.preprocess = model, vocab, device, preprocess
        encoder = model.encoder
        split = feature_map_index(encoder.features) + 1
        self.layer = f"features.{split - 1}"  # the module whose output A is
        self.bottom, self.pool = encoder.features[:split], encoder.features[split:]
        if not all(isinstance(layer, nn.MaxPool2d) for layer in self.pool):
            raise CaptionerError(f"explain: expected only max-pooling after {self.layer}")
        # fc6 and fc7 as an encoder of their own (no convolutions), sharing the weights, so that
        # the encoder's forward (with its folded fc6 for small grids) runs them as captioning does.
        self.top = VGGEncoder(SimpleNamespace(features=nn.Sequential(),  # type: ignore[arg-type]
                                              avgpool=encoder.avgpool, classifier=encoder.fc))

    def explain(self, images: Tensor, captions: Sequence[Sequence[str]]) -> list[Explanation]:
        """Maps for preprocessed images [N, 3, H, W] (Captioner.load) and one caption each."""
        if images.ndim != 4 or len(images) != len(captions):
            raise CaptionerError(f"explain: need images [N, 3, H, W] and N captions, got "
                                 f"{tuple(images.shape)} and {len(captions)} captions")
        with torch.inference_mode(False):  # the backward needs normal tensors, even where the
            acts = self.feature_map(images)  # caller's are not
            maps: list[Tensor] = [acts.new_zeros(0)] * len(captions)
            logprobs: list[Tensor] = [acts.new_zeros(0)] * len(captions)
            # Captions of one length at a time: the decoder's backward costs ~T^2 steps per
            # caption, and padded positions would cost as much as real ones.
            for group in _by_length(captions):
                inputs, targets = teacher_forcing(self.vocab, [captions[n] for n in group],
                                                  self.device)
                weights, group_logprobs = self.channel_weights(acts[group], inputs, targets)
                group_maps = grad_cam(acts[group], weights)  # [T, len(group), h, w]
                for i, n in enumerate(group):
                    maps[n], logprobs[n] = group_maps[:, i], group_logprobs[i]
        views = self._views(images)
        return [Explanation(tuple(words), maps[n].cpu().numpy(), logprobs[n].cpu().numpy(), views[n])
                for n, words in enumerate(captions)]

    def feature_map(self, images: Tensor) -> Tensor:
        """A [N, C, h, w], computed without gradients (nothing below A needs one)."""
        with _explaining(self.model), torch.no_grad():
            images = images.to(self.device).contiguous(memory_format=torch.channels_last)
            return self.bottom(images).float()

    def channel_weights(self, acts: Tensor, inputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Grad-CAM's weights, the spatial mean of d log p(word t) / dA per channel, [T, N, C], and
        the words' log-probs [N, T]; zeros past a caption's end. `inputs`, `targets`: from
        `teacher_forcing`.

        Max-pooling hands each output's gradient to one input location, so the gradient's sum
        over A's grid is its sum over the pooled grid: the backward stops above the pool. One
        word's gradient is not that of a sum over words, so the T words take one vmapped
        backward pass in each of two stages: through the decoder to fc7, then to the pooled map.
        """
        if not targets.shape[1]:  # only empty captions
            return acts.new_zeros(0, *acts.shape[:2]), acts.new_zeros(targets.shape)
        with _explaining(self.model):
            mask = targets != self.vocab.pad
            pooled = self.pool(acts).detach().requires_grad_()
            fc7 = self.top(pooled)
            fc7_leaf = fc7.detach().requires_grad_()
            with _native_rnn():
                logits = self.model.decoder(fc7_leaf, inputs)
                logprobs = torch.log_softmax(logits.float(), -1).gather(2, targets.unsqueeze(-1))
                logprobs = logprobs[..., 0] * mask
                # selectors[t] picks word t of every caption: [T, N, T].
                selectors = torch.eye(targets.shape[1], device=mask.device).unsqueeze(1) * mask
                (grad_fc7,) = torch.autograd.grad(logprobs, fc7_leaf, selectors, is_grads_batched=True)
            (grad_pooled,) = torch.autograd.grad(fc7, pooled, grad_fc7, is_grads_batched=True)
        weights = grad_pooled.sum((-2, -1)) / (acts.shape[-2] * acts.shape[-1])
        return weights, logprobs.detach()

    def _views(self, images: Tensor) -> np.ndarray:
        """The preprocessed images back in RGB bytes [N, H, W, 3]: ImageNet normalisation undone."""
        preprocess: Any = self.preprocess  # torchvision's ImageClassification preset
        mean = torch.tensor(preprocess.mean).view(1, 3, 1, 1)
        std = torch.tensor(preprocess.std).view(1, 3, 1, 1)
        rgb = (images.detach().float().cpu() * std + mean).clamp(0, 1).mul(255).round()
        return rgb.to(torch.uint8).permute(0, 2, 3, 1).numpy()


def upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Grid maps [T, h, w] stretched bilinearly to [T, *size]."""
    if not len(maps):
        return np.zeros((0, *size), np.float32)
    stretched = F.interpolate(torch.from_numpy(maps).unsqueeze(1), size=size, mode="bilinear",
                              align_corners=False)
    return stretched[:, 0].numpy()


def grad_cam(acts: Tensor, weights: Tensor) -> Tensor:
    """Grad-CAM maps [T, N, h, w] in [0, 1] from A [N, C, h, w] and per-word channel weights
    [T, N, C]: ReLU(sum_c weight_c A_c) over its maximum, or all zeros where nothing is positive."""
    cams = torch.relu(torch.einsum("tnc,nchw->tnhw", weights, acts.detach()))
    peak = cams.amax((-2, -1), keepdim=True)
    return torch.where(peak > 0, cams / peak.clamp_min(torch.finfo(cams.dtype).tiny), 0.0)


def teacher_forcing(vocab: Vocabulary, captions: Sequence[Sequence[str]],
                    device: torch.device) -> tuple[Tensor, Tensor]:
    """Decoder inputs <start> w1..w(T-1) and targets w1..wT, [N, T] padded (T: the longest
    caption; an input row is never all padding, which the packed decoder cannot take)."""
    length = max((len(words) for words in captions), default=0)
    inputs = torch.full((len(captions), max(length, 1)), vocab.pad, dtype=torch.long)
    targets = torch.full((len(captions), length), vocab.pad, dtype=torch.long)
    for n, words in enumerate(captions):
        unknown = [w for w in words if w not in vocab.index]
        if unknown:
            raise CaptionerError(f"explain: caption {n} has words the checkpoint's vocabulary "
                                 f"lacks: {', '.join(map(repr, unknown[:5]))}")
        ids = [vocab.index[w] for w in words]
        inputs[n, :max(len(ids), 1)] = torch.tensor([vocab.start, *ids[:-1]])
        targets[n, :len(ids)] = torch.tensor(ids, dtype=torch.long)
    return inputs.to(device), targets.to(device)


def _by_length(captions: Sequence[Sequence[str]]) -> list[list[int]]:
    """Indices of the captions, grouped by their number of words."""
    groups: dict[int, list[int]] = {}
    for n, words in enumerate(captions):
        groups.setdefault(len(words), []).append(n)
    return list(groups.values())


def feature_map_index(features: nn.Sequential) -> int:
    """Index in VGG's `features` of the ReLU after the last convolution: its output is A."""
    convs = [i for i, layer in enumerate(features) if isinstance(layer, nn.Conv2d)]
    if not convs:
        raise CaptionerError("explain: the encoder has no convolutional layer")
    relu = next((i for i in range(convs[-1], len(features)) if isinstance(features[i], nn.ReLU)), None)
    if relu is None:
        raise CaptionerError("explain: the encoder's last convolution is not followed by a ReLU")
    return relu


@contextlib.contextmanager
def _explaining(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) and no weight gradients, each module's and weight's own setting
    restored afterwards; gradients on even where the caller runs under inference mode
    (Captioner.caption does). Weights that want no gradient also let the encoder take its
    folded-fc6 path for small grids, far cheaper to differentiate."""
    modes = [(module, module.training) for module in model.modules()]
    wanting = [p for p in model.parameters() if p.requires_grad]
    model.eval()
    for p in wanting:
        p.requires_grad_(False)
    try:
        with torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        for p in wanting:
            p.requires_grad_(True)
        for module, training in modes:
            module.training = training


@contextlib.contextmanager
def _native_rnn() -> Iterator[None]:
    """The recurrent layer in plain torch ops, whose backward vmaps: oneDNN's falls back to a
    loop over the words (and computes weight gradients nobody asked for), cuDNN's refuses to
    run in eval mode."""
    with warnings.catch_warnings():
        # Toggling oneDNN re-sets its TF32 flag, which warns on builds without Intel GPUs.
        warnings.filterwarnings("ignore", message="TF32 acceleration on top of oneDNN")
        with torch.backends.mkldnn.flags(enabled=False), torch.backends.cudnn.flags(enabled=False):
            yield
