"""Captioning images with a trained checkpoint: the Python API behind `captioner caption`.

    from captioner import Captioner
    captioner = Captioner.from_checkpoint("runs/shapes/checkpoints/best.ckpt")
    for result in captioner.caption(["a.jpg", "b.png"], beam_size=3):
        print(result.image, result.text, result.score)

Inference runs in fp32 by default, so an image gets the same caption alone or in any batch:
bf16 kernels round the fc7 features differently for different batch sizes (see `precision`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch
from PIL import Image
from torch import Tensor

from captioner.config import Config
from captioner.data.images import MAX_PIXELS, Listing, limit_aspect, list_images, open_rgb, to_rgb
from captioner.data.vocab import Vocabulary
from captioner.errors import CaptionerError
from captioner.model import search
from captioner.model.checkpoint import check_weights_fit, checkpoint_config, load_checkpoint, model_state
from captioner.model.decoding import Decoding
from captioner.model.encoder import build_preprocess, encode
from captioner.model.explain import Explainer, Explanation
from captioner.model.network import CaptionModel
from captioner.util.hardware import resolve_device

ImageInput = str | os.PathLike[str] | Image.Image | BinaryIO

PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class Caption:
    text: str
    tokens: list[str]
    score: float  # what beams are ranked by (length-normalised log-probability when asked)
    logprob: float  # total log-probability of the words and the end token


@dataclass
class CaptionResult:
    """One input's captions (best first), or why it has none; with `explain`, the best
    caption's per-word Grad-CAM maps (captioner.model.explain.Explanation)."""

    image: str
    captions: list[Caption] = field(default_factory=list)  # best first (n-best)
    error: str | None = None
    explanations: Explanation | None = None

    @property
    def ok(self) -> bool:
        """Whether the image was captioned (else `error` says why it was not)."""
        return self.error is None

    @property
    def text(self) -> str | None:
        return self.captions[0].text if self.captions else None

    @property
    def tokens(self) -> list[str] | None:
        return self.captions[0].tokens if self.captions else None

    @property
    def score(self) -> float | None:
        return self.captions[0].score if self.captions else None


class Captioner:
    """A trained model with its vocabulary and preprocessing, ready to caption images.

        >>> from captioner import Captioner
        >>> captioner = Captioner.from_checkpoint("runs/shapes/checkpoints/best.ckpt")
        >>> captioner.caption("photo.jpg")[0].text
        'a red circle to the left of a blue square'

    `precision`: "fp32" (default) gives batch-independent results; "bf16" runs the CNN under
    bf16 autocast, faster where the hardware has bf16 units, but an image's features (so, rarely,
    its caption) then depend on which other images share its batch. `max_pixels`: larger images
    are refused undecoded, as possible decompression bombs.
    """

    def __init__(self, model: CaptionModel, vocab: Vocabulary, config: Config,
                 device: torch.device, checkpoint: Path | None = None, *,
                 precision: str = "fp32", max_pixels: int = MAX_PIXELS) -> None:
        if precision not in PRECISIONS:
            raise CaptionerError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
        self.model = model.to(device).eval()
        self.model.encoder.to(memory_format=torch.channels_last)
        self.vocab, self.config, self.device, self.checkpoint = vocab, config, device, checkpoint
        self.preprocess = build_preprocess(config.encoder.arch, config.encoder.image_size,
                                           config.encoder.resize_size)
        self.precision = precision
        self.bf16 = precision == "bf16"
        self.max_pixels = max_pixels
        self._explainer: Explainer | None = None

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], device: str | torch.device = "auto",
                        *, precision: str = "fp32", max_pixels: int = MAX_PIXELS) -> Captioner:
        """The model, vocabulary and settings a checkpoint holds, on `device` ("auto": CUDA when
        there is one). Opening a checkpoint runs no code in it (weights-only).

            >>> captioner = Captioner.from_checkpoint("best.ckpt", device="cpu")
        """
        target = resolve_device(device)  # before reading a file of possibly gigabytes
        path = Path(path)
        checkpoint = load_checkpoint(path)
        config, vocab, _ = checkpoint_config(checkpoint, path)
        # Built on the meta device, checked against the file's weights, then filled straight from
        # them: no memory for a layer the file does not hold, and no seconds spent initialising
        # VGG's weights only to overwrite them.
        model = check_weights_fit(config, vocab, model_state(checkpoint), path).to_empty(device=target)
        model.load_state_dict(model_state(checkpoint))
        return cls(model, vocab, config, target, Path(path), precision=precision, max_pixels=max_pixels)

    # -- images -> features -----------------------------------------------------------------------
    def load(self, item: ImageInput) -> Tensor:
        """One image (a path, a binary file or a PIL image) as the network's input tensor
        [3, H, W]: upright RGB, resized, centre-cropped and normalised as in training.

            >>> x = captioner.load("photo.jpg")
        """
        image = to_rgb(item) if isinstance(item, Image.Image) else open_rgb(item, self.max_pixels)
        return self.preprocess(limit_aspect(image))

    def encode(self, images: Tensor) -> Tensor:
        """fc7 features [N, 4096] of loaded images [N, 3, H, W].

            >>> features = captioner.encode(torch.stack([captioner.load(p) for p in paths]))
        """
        exact = self.device.type == "cuda" and not self.bf16
        with _ieee_fp32_convs() if exact else contextlib.nullcontext():
            return encode(self.model.encoder, images, self.bf16)

    # -- features -> captions -------------------------------------------------------------------
    @torch.inference_mode()
    def caption_features(self, features: Tensor, decoding: Decoding | None = None, *,
                         generator: torch.Generator | None = None, **options: Any) -> list[list[Caption]]:
        """Captions for a batch of fc7 features [N, 4096]: n_best per image, best first.
        `decoding` and `options`: as for `caption`; `generator` drives sampling.

            >>> captioner.caption_features(features, beam_size=5, n_best=2)[0][1].text
        """
        return self._decode(features, Decoding.of(decoding, **options), generator)

    def _decode(self, features: Tensor, decoding: Decoding,
                generator: torch.Generator | None) -> list[list[Caption]]:
        decoder, n = self.model.decoder, decoding.n_best
        state = decoder.initial_state(features.to(self.device).float())
        options = {"bos": self.vocab.start, "eos": self.vocab.end,
                   "max_length": decoding.max_length or self.config.eval.max_length,
                   "banned": (self.vocab.pad, self.vocab.start)}
        if decoding.sample:
            state = tuple(s.repeat_interleave(n, dim=1) for s in state)  # n draws per image
            drawn = search.sample(decoder.step, state, temperature=decoding.temperature,
                                  top_k=decoding.top_k, generator=generator, **options)
            hyps = [sorted(drawn[i:i + n], key=lambda h: -h.score) for i in range(0, len(drawn), n)]
        else:
            hyps = search.beam_search(decoder.step, state, beam_size=decoding.beam_size, n_best=n,
                                      length_penalty=decoding.length_penalty, **options)
        return [[self._caption(h) for h in per_image] for per_image in hyps]

    def _caption(self, hyp: search.Hypothesis) -> Caption:
        words = self.vocab.decode(hyp.tokens)
        return Caption(" ".join(words), words, float(hyp.score), float(hyp.logprob))

    def caption(self, inputs: ImageInput | Iterable[ImageInput], decoding: Decoding | None = None,
                *, seed: int | None = None, batch_size: int = 32, explain: bool = False,
                recursive: bool = False, **options: Any) -> list[CaptionResult]:
        """Caption images: paths, folders (every image inside, sorted; with `recursive` also in
        subfolders), binary files or PIL images. One result per image in order; an unreadable
        one gets `error` instead of captions. How captions are searched: `decoding`, with any
        of its fields changed by `options` (beam_size=3, n_best=1, max_length=None: the
        checkpoint's, length_penalty=0.0, sample=False, temperature=1.0, top_k=0; see
        `Decoding`); `seed` makes sampling reproducible for the same inputs and batch size;
        `explain` adds each best caption's per-word Grad-CAM maps (`result.explanations`).

            >>> results = captioner.caption(["a.jpg", "photos/"], beam_size=5, n_best=2)
            >>> [r.text if r.ok else r.error for r in results]
        """
        return list(self.stream(inputs, decoding, seed=seed, batch_size=batch_size, explain=explain,
                                recursive=recursive, **options))

    def stream(self, inputs: ImageInput | Iterable[ImageInput], decoding: Decoding | None = None,
               *, seed: int | None = None, batch_size: int = 32, explain: bool = False,
               recursive: bool = False, **options: Any) -> Iterator[CaptionResult]:
        """`caption`, yielding results batch by batch (a large folder shows progress).

            >>> for result in captioner.stream(paths, batch_size=64):
            ...     print(result.image, result.text)
        """
        decoding = Decoding.of(decoding, **options)  # checked now, not at the first next()
        if batch_size < 1:
            raise CaptionerError(f"batch_size must be at least 1, got {batch_size}")
        if isinstance(inputs, (str, os.PathLike, Image.Image)) or hasattr(inputs, "read"):
            inputs = [inputs]
        items = [x for item in inputs for x in expand_folder(item, recursive).images]
        return self._stream(items, decoding, seed, batch_size, explain)

    @torch.inference_mode()
    def _stream(self, inputs: list[ImageInput], decoding: Decoding, seed: int | None,
                batch_size: int, explain: bool) -> Iterator[CaptionResult]:
        generator = None
        if decoding.sample and seed is not None:
            generator = torch.Generator(self.device).manual_seed(seed)
        for start in range(0, len(inputs), batch_size):
            chunk = range(start, min(start + batch_size, len(inputs)))
            results = [CaptionResult(_name(inputs[n], n)) for n in chunk]
            loaded: list[tuple[CaptionResult, Tensor]] = []
            for n, result in zip(chunk, results):
                try:
                    loaded.append((result, self.load(inputs[n])))
                except CaptionerError as err:
                    result.error = str(err)
            if loaded:
                features = self.encode(torch.stack([x for _, x in loaded]))
                for (result, _), captions in zip(loaded, self._decode(features, decoding, generator)):
                    result.captions = captions
            if explain and loaded:
                self._explain_loaded(loaded)
            yield from results

    # -- captions -> where the model looked ------------------------------------------------------
    def explainer(self) -> Explainer:
        """Per-word Grad-CAM over this model (captioner.model.explain), built at the first call."""
        if self._explainer is None:
            self._explainer = Explainer(self.model, self.vocab, self.device, self.preprocess)
        return self._explainer

    def explain(self, inputs: Sequence[ImageInput], results: Sequence[CaptionResult],
                batch_size: int = 32) -> list[Explanation | None]:
        """The best caption of each result explained, in order; None where a result has no
        caption (its image failed). `inputs` are what was captioned, in the same order."""
        if len(inputs) != len(results):
            raise CaptionerError(f"explain: {len(inputs)} images but {len(results)} results")
        if batch_size < 1:
            raise CaptionerError(f"batch_size must be at least 1, got {batch_size}")
        todo = [i for i, result in enumerate(results) if result.tokens is not None]
        explained: list[Explanation | None] = [None] * len(results)
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            images = torch.stack([self.load(inputs[i]) for i in chunk])
            for i, explanation in zip(chunk, self.explainer().explain(
                    images, [results[i].tokens for i in chunk])):
                explained[i] = explanation
        return explained

    def _explain_loaded(self, loaded: list[tuple[CaptionResult, Tensor]]) -> None:
        explanations = self.explainer().explain(torch.stack([x for _, x in loaded]),
                                                [r.tokens for r, _ in loaded])
        for (result, _), explanation in zip(loaded, explanations):
            result.explanations = explanation


@contextlib.contextmanager
def _ieee_fp32_convs() -> Iterator[None]:
    """fp32 means IEEE fp32: cuDNN runs fp32 convolutions in TF32 by default. torch 2.9 made
    that setting `cudnn.conv.fp32_precision`; before it, `cudnn.allow_tf32` is the switch."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        owner, name, ieee = conv, "fp32_precision", "ieee"
    else:
        owner, name, ieee = torch.backends.cudnn, "allow_tf32", False
    saved = getattr(owner, name)
    setattr(owner, name, ieee)
    try:
        yield
    finally:
        setattr(owner, name, saved)


def _name(item: ImageInput, n: int) -> str:
    """How results name an input: its path, a binary file's name, else its position."""
    if isinstance(item, (str, os.PathLike)):
        return os.fspath(item)
    name = getattr(item, "name", None)
    return name if isinstance(name, str) and not isinstance(item, Image.Image) else f"<image {n}>"


def expand_folder(item: ImageInput, recursive: bool = False) -> Listing:
    """A folder given as input stands for the images in it; anything else for itself."""
    if isinstance(item, (str, os.PathLike)) and Path(item).is_dir():
        listing = list_images(Path(item), recursive)
        listing.images = [Path(item) / p.relative_to(item) for p in listing.images]
        return listing
    return Listing([item], {})
