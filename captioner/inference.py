"""Captioning images with a trained checkpoint: the Python API behind `captioner caption`.

    from captioner import Captioner
    captioner = Captioner.from_checkpoint("runs/shapes/checkpoints/best.ckpt")
    for result in captioner.caption(["a.jpg", "b.png"], beam_size=3):
        print(result.image, result.text)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from captioner.checkpoint import load_checkpoint, model_state
from captioner.config import Config, from_dict
from captioner.data.vocab import Vocabulary
from captioner.encoder import build_preprocess, encode, fast_bf16
from captioner.errors import CaptionerError
from captioner.images import open_rgb, to_rgb
from captioner.model import CaptionModel, build_model
from captioner.search import Hypothesis, beam_search, sample

ImageInput = str | os.PathLike[str] | Image.Image


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
    def text(self) -> str | None:
        return self.captions[0].text if self.captions else None

    @property
    def tokens(self) -> list[str] | None:
        return self.captions[0].tokens if self.captions else None

    @property
    def score(self) -> float | None:
        return self.captions[0].score if self.captions else None


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CaptionerError(f"--device {device}: CUDA is not available on this machine")
    try:
        return torch.device(device)
    except RuntimeError as err:
        raise CaptionerError(f"--device {device!r}: not a device torch knows") from err


class Captioner:
    def __init__(self, model: CaptionModel, vocab: Vocabulary, config: Config,
                 device: torch.device, checkpoint: Path | None = None) -> None:
        self.model = model.to(device).eval()
        self.model.encoder.to(memory_format=torch.channels_last)
        self.vocab, self.config, self.device, self.checkpoint = vocab, config, device, checkpoint
        self.preprocess = build_preprocess(config.encoder.arch, config.encoder.image_size,
                                           config.encoder.resize_size)
        self.bf16 = fast_bf16(device)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], device: str = "auto") -> Captioner:
        checkpoint = load_checkpoint(path)
        hparams = checkpoint["hyper_parameters"]
        config, vocab = from_dict(hparams["config"]), Vocabulary(hparams["vocab"])
        model = build_model(config, len(vocab), vocab.pad, pretrained=False)
        try:
            model.load_state_dict(model_state(checkpoint))
        except RuntimeError as err:
            raise CaptionerError(f"{path}: weights do not match its own config ({err})") from err
        return cls(model, vocab, config, resolve_device(device), Path(path))

    # -- images -> features -----------------------------------------------------------------------
    def load(self, item: ImageInput) -> Tensor:
        image = to_rgb(item) if isinstance(item, Image.Image) else open_rgb(item)
        return self.preprocess(image)

    def encode(self, images: Tensor) -> Tensor:
        return encode(self.model.encoder, images, self.bf16)

    # -- features -> captions -------------------------------------------------------------------
    @torch.inference_mode()
    def caption_features(
        self, features: Tensor, *, beam_size: int = 3, n_best: int = 1,
        max_length: int | None = None, length_penalty: float = 0.0, sample_captions: bool = False,
        temperature: float = 1.0, top_k: int = 0, seed: int | None = None,
    ) -> list[list[Caption]]:
        """Captions for a batch of fc7 features [N, 4096]: n_best per image, best first."""
        decoder = self.model.decoder
        state = decoder.initial_state(features.to(self.device).float())
        options = {"bos": self.vocab.start, "eos": self.vocab.end,
                   "max_length": max_length or self.config.eval.max_length,
                   "banned": (self.vocab.pad, self.vocab.start)}
        if sample_captions:
            generator = torch.Generator(self.device).manual_seed(seed) if seed is not None else None
            hyps = [[h] for h in sample(decoder.step, state, temperature=temperature,
                                        top_k=top_k, generator=generator, **options)]
        else:
            hyps = beam_search(decoder.step, state, beam_size=beam_size, n_best=n_best,
                               length_penalty=length_penalty, **options)
        return [[self._caption(h) for h in per_image] for per_image in hyps]

    def _caption(self, hyp: Hypothesis) -> Caption:
        words = self.vocab.decode(hyp.tokens)
        return Caption(" ".join(words), words, float(hyp.score), float(hyp.logprob))

    def caption(self, inputs: ImageInput | Iterable[ImageInput], *, batch_size: int = 32,
                **options) -> list[CaptionResult]:
        """Caption paths or PIL images; an unreadable input gets `error` instead of captions."""
        if isinstance(inputs, (str, os.PathLike, Image.Image)):
            inputs = [inputs]
        inputs = list(inputs)
        results = [CaptionResult(_name(item, n)) for n, item in enumerate(inputs)]
        for start in range(0, len(inputs), batch_size):
            chunk = range(start, min(start + batch_size, len(inputs)))
            loaded: list[tuple[int, Tensor]] = []
            for n in chunk:
                try:
                    loaded.append((n, self.load(inputs[n])))
                except CaptionerError as err:
                    results[n].error = str(err)
            if loaded:
                features = self.encode(torch.stack([x for _, x in loaded]))
                for (n, _), captions in zip(loaded, self.caption_features(features, **options)):
                    results[n].captions = captions
        return results


def _name(item: ImageInput, n: int) -> str:
    return f"<image {n}>" if isinstance(item, Image.Image) else os.fspath(item)


def expand_inputs(paths: Sequence[str]) -> list[str]:
    """Files as given; a directory stands for every image directly inside it, sorted by name."""
    from captioner.images import list_images

    expanded: list[str] = []
    for p in paths:
        path = Path(p)
        expanded.extend(str(f) for f in list_images(path)) if path.is_dir() else expanded.append(p)
    return expanded
