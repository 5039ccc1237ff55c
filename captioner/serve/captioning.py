"""The model's side of the server: decoding uploads into tensors (on any thread), and one
forward pass over many requests' images (on the model's thread only).

A pass runs the CNN once over every image it was given, whatever the requests asked, then
searches captions per set of options and explains the captions of the requests that asked. In
fp32 an image's caption is the same alone or batched with others' (see Captioner's precision).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO

import torch
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
    """One request's images [N, 3, H, W] (preprocessed) and what it asked for."""

    images: Tensor
    options: Options


@dataclass
class Captioned:
    """One image's captions, best first, and with `explain` the best one's word maps."""

    captions: list[Caption]
    explanation: Explanation | None = None


def load_uploads(captioner: Captioner, uploads: Sequence[Upload]) -> Tensor:
    """The uploads decoded and preprocessed as the Python API does, [N, 3, H, W]; the first that
    is empty, not an image, truncated or over the pixel limit is a RequestError(422)."""
    tensors = []
    for upload in uploads:
        if not upload.data:
            raise RequestError(422, f"{upload.name}: empty file")
        file = BytesIO(upload.data)
        file.name = upload.name  # open_rgb's messages name the file
        try:
            tensors.append(captioner.load(file))
        except CaptionerError as err:
            raise RequestError(422, str(err)) from None
    return torch.stack(tensors)


class Pass:
    """Callable on the model's thread: captions for a batch of jobs, one list per job. The CNN
    and the explanations take at most `batch_size` images at a time (one request may hold more)."""

    def __init__(self, captioner: Captioner, batch_size: int) -> None:
        self.captioner, self.batch_size = captioner, batch_size
        self._explainer: Explainer | None = None  # built at the first request that explains

    @torch.inference_mode()
    def __call__(self, jobs: Sequence[Job]) -> list[list[Captioned]]:
        images = torch.cat([job.images for job in jobs])
        options = [job.options for job in jobs for _ in range(len(job.images))]  # per image
        features = torch.cat([self.captioner.encode(chunk) for chunk in images.split(self.batch_size)])
        captions = self._captions(features, [o.decoding for o in options])
        explained = self._explain(images, captions, [o.explain for o in options])
        results = iter([Captioned(c, e) for c, e in zip(captions, explained)])
        return [list(itertools.islice(results, len(job.images))) for job in jobs]

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
            self._explainer = self._explainer or Explainer(self.captioner)
            for start in range(0, len(rows), self.batch_size):
                chunk = rows[start:start + self.batch_size]
                found = self._explainer.explain(images[chunk], [captions[row][0].tokens for row in chunk])
                for row, explanation in zip(chunk, found):
                    explained[row] = explanation
        return explained
