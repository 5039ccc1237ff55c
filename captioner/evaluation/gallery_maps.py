"""Where the model looked, for the report's gallery: Grad-CAM overlays of chosen words.

A failure card shows the words that went wrong: those of objects the caption hallucinates, and
any word no reference of the image uses (a wrong colour, a wrong object); a success card shows
one word, the first the references agree with, for contrast. Each is an overlay of that word's
Grad-CAM map (captioner.model.explain) on the image as the network saw it, written into
<report>/maps/ so the page stays a folder of its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from captioner.data.tokenize import tokenize
from captioner.errors import CaptionerError
from captioner.evaluation.records import ImageRecord, WordMap
from captioner.model.explain_files import overlay
from captioner.model.inference import Captioner
from captioner.util.atomic import atomic_path

MAP_PX = 120
WORDS_PER_FAILURE = 3
# Words that carry no content of their own: a map for "a" or "with" says little.
_FUNCTION = frozenset("a an the of on in at to with and or is are there this that its".split())


class GalleryMaps:
    """Overlays for gallery records; `paths` maps image ids to their files."""

    def __init__(self, captioner: Captioner, paths: Mapping[int, Path]) -> None:
        self.captioner, self.paths = captioner, paths

    def __call__(self, out_dir: Path, worst: Sequence[ImageRecord],
                 best: Sequence[ImageRecord]) -> dict[int, list[WordMap]]:
        """Each card's word maps (files relative to out_dir), by image id."""
        chosen = {r.image_id: (r, wrong_words(r)) for r in worst}
        chosen |= {r.image_id: (r, right_word(r)) for r in best if r.image_id not in chosen}
        chosen = {k: v for k, v in chosen.items() if v[1]}
        if not chosen:
            return {}
        images, captions, ids = [], [], []
        for image_id, (record, _) in chosen.items():
            try:
                images.append(self.captioner.load(self.paths[image_id]))
            except CaptionerError:
                continue  # an unreadable image has no thumbnail either
            captions.append(record.prediction.split())
            ids.append(image_id)
        if not images:
            return {}
        explanations = self.captioner.explainer().explain(torch.stack(images), captions)
        return {image_id: _write(out_dir, image_id, explanation, chosen[image_id][1])
                for image_id, explanation in zip(ids, explanations)}


def wrong_words(record: ImageRecord) -> list[int]:
    """Positions of the words that went wrong: in a hallucinated object's name, or used by no
    reference of the image (content words only), at most WORDS_PER_FAILURE."""
    words = record.prediction.split()
    hallucinated = {w for label in record.hallucinated for w in label.split()}
    referenced = {w for reference in record.references for w in tokenize(reference)}
    wrong = [t for t, w in enumerate(words)
             if w not in _FUNCTION and (w in hallucinated or w not in referenced)]
    return wrong[:WORDS_PER_FAILURE]


def right_word(record: ImageRecord) -> list[int]:
    """The position of the first content word the references use too (none if there is none)."""
    referenced = {w for reference in record.references for w in tokenize(reference)}
    for t, word in enumerate(record.prediction.split()):
        if word not in _FUNCTION and word in referenced:
            return [t]
    return []


def _write(out_dir: Path, image_id: int, explanation: Any, positions: list[int]) -> list[WordMap]:
    maps = []
    for t in positions:
        relative = f"maps/{image_id}-{t}.png"
        with atomic_path(out_dir / relative) as tmp:
            overlay(explanation, t, MAP_PX).save(tmp, format="PNG")
        # An all-zero map overlays nothing: the card says so rather than show a plain image.
        maps.append(WordMap(explanation.words[t], relative, empty=not explanation.maps[t].any()))
    return maps
