"""The JSON the API answers with, one record per image (docs/serve.md shows an example)."""

from __future__ import annotations

import base64
from io import BytesIO
from typing import Any

from PIL import Image

from captioner.model.explain import Explanation
from captioner.model.explain_files import WordMaps
from captioner.serve.captioning import Captioned


def result_record(name: str, captioned: Captioned) -> dict[str, Any]:
    """{"image", "caption", "score", "logprob", "n_best": [{"caption", "score", "logprob"}, ...]}
    and, when asked, "explanation" (see explanation_record)."""
    best = captioned.captions[0]
    record: dict[str, Any] = {
        "image": name, "caption": best.text, "score": best.score, "logprob": best.logprob,
        "n_best": [{"caption": c.text, "score": c.score, "logprob": c.logprob}
                   for c in captioned.captions],
    }
    if captioned.explanation is not None:
        record["explanation"] = explanation_record(captioned.explanation)
    return record


def explanation_record(explanation: Explanation) -> dict[str, Any]:
    """The best caption's word maps as `captioner caption --explain` writes them to maps.json
    (words, logprobs, grid, maps [T][h][w] in [0, 1], peaks, view_size), and "view": the image
    as the network saw it, a PNG data URL, for drawing the maps over."""
    record = WordMaps.of("", explanation).grid_json()  # the result record says image and caption
    png = BytesIO()
    Image.fromarray(explanation.view).save(png, format="PNG")
    record["view"] = "data:image/png;base64," + base64.b64encode(png.getvalue()).decode("ascii")
    return record
