"""The model's side of the server: decoding uploads into tensors (on any thread), and one
forward pass over many requests' images (on the model's thread only).

An upload is first opened (its header only: format and size, cheap), then decoded. A large image
is decoded small where Pillow can (a JPEG at 1/2, 1/4 or 1/8 scale: Image.draft) or reduced
right after decoding (Image.reduce), to a shorter side of at least REDUCED_SIDE pixels, far more
than the network's input: its caption may differ slightly from the Python API's, which decodes
it whole, but it costs a fraction of the memory and time. Smaller images are decoded as the
Python API does them.

A pass runs the CNN once over every image it was given, whatever the requests asked, then
searches captions per set of options and explains the captions of the requests that asked. In
fp32 an image's caption is the same alone or batched with others' (see Captioner's precision).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from captioner.errors import CaptionerError
from captioner.model.decoding import Decoding
from captioner.model.explain import Explainer, Explanation
from captioner.model.inference import Caption, Captioner
from captioner.serve.options import Options, RequestError


@dataclass(frozen=True)
class Upload:
    name: str  # the file name the client gave
    data: bytes


@dataclass
class Job:
    """One image [3, H, W] (preprocessed) and what its request asked for."""

    image: Tensor
    options: Options


@dataclass
class Captioned:
    """One image's captions, best first, and with `explain` the best one's word maps."""

    captions: list[Caption]
    explanation: Explanation | None = None


REDUCED_SIDE = 1024  # a larger image's shorter side is decoded or reduced to at least this


@dataclass
class Opened:
    """An upload whose header has been read: what decoding it will give, not yet decoded."""

    name: str
    image: Image.Image  # lazily decoded; a JPEG already set to decode small (draft)
    pixels: int  # as it will be decoded


def open_upload(upload: Upload, max_pixels: int) -> Opened:
    """The upload's header read (RequestError(422) if it is empty, not an image or over
    `max_pixels`), and a large JPEG set to decode at a reduced scale."""
    if not upload.data:
        raise RequestError(422, f"{upload.name}: empty file")
    with _refusals(upload.name):
        image = Image.open(BytesIO(upload.data))
        if image.width * image.height > max_pixels:
            raise RequestError(422, f"{upload.name}: refused: {image.width}x{image.height} pixels is over "
                                    f"the {max_pixels:,}-pixel limit (--max-pixels)")
        if image.format == "JPEG" and min(image.size) >= 2 * REDUCED_SIDE:
            image.draft(image.mode, (REDUCED_SIDE, REDUCED_SIDE))
    return Opened(upload.name, image, image.width * image.height)


def decode(captioner: Captioner, opened: Opened) -> Tensor:
    """The network's input [3, H, W] for an opened upload (RequestError(422) if it is broken)."""
    with _refusals(opened.name), opened.image as image:
        image.load()
        factor = min(image.size) // REDUCED_SIDE
        if factor >= 2:
            try:
                image = image.reduce(factor)
            except ValueError:  # a mode reduce() does not support: decoded whole, as the API does
                pass
        return captioner.load(image)


def load_uploads(captioner: Captioner, uploads: Sequence[Upload]) -> Tensor:
    """The uploads decoded and preprocessed, [N, 3, H, W], here and now (the server decodes in
    its lanes instead); the first that is empty, not an image, truncated or over the pixel limit
    is a RequestError(422)."""
    opened = [open_upload(upload, captioner.max_pixels) for upload in uploads]
    return torch.stack([decode(captioner, one) for one in opened])


@contextmanager
def _refusals(name: str) -> Iterator[None]:
    """Pillow's many failures as one RequestError(422) naming the file, worded as open_rgb's."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except RequestError:
        raise
    except CaptionerError as err:
        raise RequestError(422, str(err)) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise RequestError(422, f"{name}: refused as a possible decompression bomb ({err})") from None
    except UnidentifiedImageError:
        raise RequestError(422, f"{name}: not an image Pillow can read") from None
    except Exception as err:  # Pillow's decoders raise many types (OSError, SyntaxError, struct.error...)
        raise RequestError(422, f"{name}: broken or truncated image ({type(err).__name__}: {err})") from None


class Pass:
    """Callable on the model's thread: each job's captions, for a batch of jobs (at most the
    batch size: the batcher sees to it) from any number of requests."""

    def __init__(self, captioner: Captioner) -> None:
        self.captioner = captioner
        self._explainer: Explainer | None = None  # built at the first request that explains

    @torch.inference_mode()
    def __call__(self, jobs: Sequence[Job]) -> list[Captioned]:
        images = torch.stack([job.image for job in jobs])
        features = self.captioner.encode(images)
        captions = self._captions(features, [job.options.decoding for job in jobs])
        explained = self._explain(images, captions, [job.options.explain for job in jobs])
        return [Captioned(c, e) for c, e in zip(captions, explained)]

    def _captions(self, features: Tensor, decodings: list[Decoding]) -> list[list[Caption]]:
        """Each image's captions, searched once per set of options among the images."""
        rows_by: dict[Decoding, list[int]] = {}
        for row, decoding in enumerate(decodings):
            rows_by.setdefault(decoding, []).append(row)
        captions: list[list[Caption]] = [[] for _ in decodings]
        for decoding, rows in rows_by.items():
            found = self.captioner.caption_features(features[rows], **dataclasses.asdict(decoding))
            for row, per_image in zip(rows, found):
                captions[row] = per_image
        return captions

    def _explain(self, images: Tensor, captions: list[list[Caption]],
                 wanted: list[bool]) -> list[Explanation | None]:
        """The best caption's word maps for the images whose request asked, else None."""
        rows = [row for row, want in enumerate(wanted) if want]
        explained: list[Explanation | None] = [None] * len(captions)
        if rows:
            self._explainer = self._explainer or self.captioner.explainer()
            found = self._explainer.explain(images[rows], [captions[row][0].tokens for row in rows])
            for row, explanation in zip(rows, found):
                explained[row] = explanation
        return explained
