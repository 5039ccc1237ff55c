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

import torch
from PIL import Image
from torch import Tensor

from captioner.config import Config
from captioner.data.images import limit_aspect, list_images, open_rgb, to_rgb
from captioner.data.vocab import Vocabulary
from captioner.errors import CaptionerError
from captioner.model import search
from captioner.model.checkpoint import check_weights_fit, checkpoint_config, load_checkpoint, model_state
from captioner.model.encoder import build_preprocess, encode
from captioner.model.network import CaptionModel

ImageInput = str | os.PathLike[str] | Image.Image
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class Caption:
    text: str
    tokens: list[str]
    score: float  # what beams are ranked by (length-normalised log-probability when asked)
    logprob: float  # total log-probability of the words and the end token


@dataclass
class CaptionResult:
    image: str
    captions: list[Caption] = field(default_factory=list)  # best first (n-best)
    error: str | None = None

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


@dataclass(frozen=True)
class Decoding:
    """How captions are generated. Beam search keeps the `n_best` best beams; sampling draws
    `n_best` captions per image (most likely first) from the model's distribution sharpened by
    `temperature`, restricted to the `top_k` most likely words at each step when top_k > 0."""

    beam_size: int = 3
    n_best: int = 1
    max_length: int | None = None  # words + end token; default: the checkpoint's eval.max_length
    length_penalty: float = 0.0  # GNMT alpha; 0 ranks by plain log-probability
    sample: bool = False
    temperature: float = 1.0
    top_k: int = 0

    def __post_init__(self) -> None:
        max_length = 1 if self.max_length is None else self.max_length  # None: the checkpoint's
        try:
            search.check_options(beam_size=self.beam_size if not self.sample else self.n_best,
                                 n_best=self.n_best, max_length=max_length,
                                 temperature=self.temperature, top_k=self.top_k)
        except ValueError as err:
            raise CaptionerError(str(err)) from None


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" (CUDA when there is one), "cpu", "cuda" or "cuda:N"."""
    device = str(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError):
        resolved = None
    if resolved is None or resolved.type not in ("cpu", "cuda"):
        raise CaptionerError(f"device {device!r}: use cpu, cuda, cuda:N or auto")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise CaptionerError(f"device {device!r}: CUDA is not available on this machine")
    if resolved.type == "cuda" and (resolved.index or 0) >= torch.cuda.device_count():
        raise CaptionerError(f"device {device!r}: this machine has {torch.cuda.device_count()} GPUs")
    return resolved


class Captioner:
    """A trained model with its vocabulary and preprocessing, ready to caption images.

    `precision`: "fp32" (default) gives batch-independent results; "bf16" runs the CNN under
    bf16 autocast, faster where the hardware has bf16 units, but an image's features (so, rarely,
    its caption) then depend on which other images share its batch.
    """

    def __init__(self, model: CaptionModel, vocab: Vocabulary, config: Config,
                 device: torch.device, checkpoint: Path | None = None, *,
                 precision: str = "fp32") -> None:
        if precision not in PRECISIONS:
            raise CaptionerError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
        self.model = model.to(device).eval()
        self.model.encoder.to(memory_format=torch.channels_last)
        self.vocab, self.config, self.device, self.checkpoint = vocab, config, device, checkpoint
        self.preprocess = build_preprocess(config.encoder.arch, config.encoder.image_size,
                                           config.encoder.resize_size)
        self.precision = precision
        self.bf16 = precision == "bf16"

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], device: str | torch.device = "auto",
                        *, precision: str = "fp32") -> Captioner:
        target = resolve_device(device)  # before reading a file of possibly gigabytes
        path = Path(path)
        checkpoint = load_checkpoint(path)
        config, vocab, _ = checkpoint_config(checkpoint, path)
        # Built on the meta device, checked against the file's weights, then filled straight from
        # them: no memory for a layer the file does not hold, and no seconds spent initialising
        # VGG's weights only to overwrite them.
        model = check_weights_fit(config, vocab, model_state(checkpoint), path).to_empty(device=target)
        model.load_state_dict(model_state(checkpoint))
        return cls(model, vocab, config, target, Path(path), precision=precision)

    # -- images -> features -----------------------------------------------------------------------
    def load(self, item: ImageInput) -> Tensor:
        image = to_rgb(item) if isinstance(item, Image.Image) else open_rgb(item)
        return self.preprocess(limit_aspect(image))

    def encode(self, images: Tensor) -> Tensor:
        exact = self.device.type == "cuda" and not self.bf16
        with _ieee_fp32_convs() if exact else contextlib.nullcontext():
            return encode(self.model.encoder, images, self.bf16)

    # -- features -> captions -------------------------------------------------------------------
    @torch.inference_mode()
    def caption_features(self, features: Tensor, *, generator: torch.Generator | None = None,
                         **decoding) -> list[list[Caption]]:
        """Captions for a batch of fc7 features [N, 4096]: n_best per image, best first.
        `decoding`: the fields of `Decoding`; `generator` drives sampling."""
        return self._decode(features, Decoding(**decoding), generator)

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

    def caption(self, inputs: ImageInput | Iterable[ImageInput], *, beam_size: int = 3,
                n_best: int = 1, max_length: int | None = None, length_penalty: float = 0.0,
                sample: bool = False, temperature: float = 1.0, top_k: int = 0,
                seed: int | None = None, batch_size: int = 32) -> list[CaptionResult]:
        """Caption paths or PIL images, one result per input in order; an unreadable input gets
        `error` instead of captions. See `Decoding` for the options; `seed` makes sampling
        reproducible for the same inputs and batch size."""
        return list(self.stream(
            inputs, beam_size=beam_size, n_best=n_best, max_length=max_length,
            length_penalty=length_penalty, sample=sample, temperature=temperature, top_k=top_k,
            seed=seed, batch_size=batch_size,
        ))

    def stream(self, inputs: ImageInput | Iterable[ImageInput], *, seed: int | None = None,
               batch_size: int = 32, **decoding) -> Iterator[CaptionResult]:
        """`caption`, yielding results batch by batch (a large folder shows progress)."""
        options = Decoding(**decoding)  # checked now, not at the first next()
        if batch_size < 1:
            raise CaptionerError(f"batch_size must be at least 1, got {batch_size}")
        if isinstance(inputs, (str, os.PathLike, Image.Image)):
            inputs = [inputs]
        return self._stream(list(inputs), options, seed, batch_size)

    @torch.inference_mode()
    def _stream(self, inputs: list[ImageInput], decoding: Decoding, seed: int | None,
                batch_size: int) -> Iterator[CaptionResult]:
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
            yield from results


@contextlib.contextmanager
def _ieee_fp32_convs() -> Iterator[None]:
    """fp32 means IEEE fp32: cuDNN runs fp32 convolutions in TF32 by default."""
    conv = torch.backends.cudnn.conv
    saved, conv.fp32_precision = conv.fp32_precision, "ieee"
    try:
        yield
    finally:
        conv.fp32_precision = saved


def _name(item: ImageInput, n: int) -> str:
    return f"<image {n}>" if isinstance(item, Image.Image) else os.fspath(item)


def expand_inputs(paths: Sequence[str]) -> list[str]:
    """Files as given; a directory stands for every image directly inside it, sorted by name."""
    expanded: list[str] = []
    for p in paths:
        path = Path(p)
        expanded.extend(str(f) for f in list_images(path)) if path.is_dir() else expanded.append(p)
    return expanded
