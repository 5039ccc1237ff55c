"""Explanations on disk: a heat-map overlay per word, one strip per caption, the maps as JSON.

    DIR/<name>/01-a.png, 02-red.png, ...   each word's map over the image as the model saw it
    DIR/<name>/strip.png                   the image, then every word's overlay, labelled
    DIR/<name>/maps.json                   words, log-probs, grid maps, peaks (see WordMaps)

Overlays show the resized, centre-cropped view the network was given, not the original file:
the maps cover only that crop.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont

from captioner.errors import CaptionerError
from captioner.model.explain import Explanation, upsample
from captioner.util.atomic import TEMP_SUFFIX, atomic_path, write_json
from captioner.util.paths import MARK, claim_out_dir, seal_out_dir
from captioner.util.schema import check_record, read_json

MAPS_FILE = "maps.json"
MAPS_VERSION = 1
_COMMAND = "explanation"
HEAT_ALPHA = 0.6  # a map's peak hides 60% of the image beneath it; where it is 0, nothing
_LABEL_PX = 20
# The first panel's label, bracketed so that it never reads as a word of the caption ("an image
# with ..." gave "image | an | image").
VIEW_LABEL = "[input]"


def overlay(explanation: Explanation, t: int, size: int = 224) -> Image.Image:
    """Word t's map (jet colours) over the view, the shorter side scaled to `size` pixels."""
    height, width = explanation.view.shape[:2]
    scale = size / min(height, width)
    shape = (round(height * scale), round(width * scale))
    view = np.asarray(Image.fromarray(explanation.view).resize(shape[::-1], Image.Resampling.BICUBIC),
                      dtype=np.float32)
    heat_map = upsample(explanation.maps[t:t + 1], shape)[0]
    heat = colormaps["jet"](heat_map)[..., :3] * 255.0
    alpha = HEAT_ALPHA * heat_map[..., None]
    return Image.fromarray((view * (1 - alpha) + heat * alpha).round().astype(np.uint8))


def strip(explanation: Explanation, size: int = 160) -> Image.Image:
    """The view, then each word's overlay, side by side with the word beneath; a word whose map
    is all zeros is labelled "(none)"."""
    first = Image.fromarray(explanation.view).resize((size, size), Image.Resampling.BICUBIC)
    panels = [first, *(overlay(explanation, t, size).resize((size, size))
                       for t in range(len(explanation.words)))]
    tiles = list(zip(panels, strip_labels(explanation), strict=True))
    canvas = Image.new("RGB", (size * len(tiles), size + _LABEL_PX), "white")
    draw, font = ImageDraw.Draw(canvas), _font()
    for i, (tile, label) in enumerate(tiles):
        canvas.paste(tile, (i * size, 0))
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        draw.text((i * size + (size - right + left) / 2, size + (_LABEL_PX - bottom + top) / 2 - top),
                  label, fill="black", font=font)
    return canvas


def strip_labels(explanation: Explanation) -> list[str]:
    """The strip's labels: the view's, then each word, "(none)" after a word whose map is empty."""
    return [VIEW_LABEL, *(f"{word} (none)" if not explanation.maps[t].any() else word
                          for t, word in enumerate(explanation.words))]


@dataclass(frozen=True)
class WordMaps:
    """maps.json: one caption's maps on the conv grid ([T][h][w], 4 decimals, row 0 at the top),
    each word's log-probability given the words before it, its peak (x, y) in view pixels (None
    for an all-zero map), and the files written beside it."""

    image: str
    caption: str
    words: list[str]
    view_size: list[int]  # [width, height] of the view the network was given
    grid: list[int]  # [h, w]
    logprobs: list[float]
    peaks: list[list[float] | None]
    maps: list[list[list[float]]]
    files: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, name: str, explanation: Explanation) -> WordMaps:
        height, width = explanation.view.shape[:2]
        return cls(
            name, " ".join(explanation.words), list(explanation.words), [width, height],
            list(explanation.maps.shape[1:]),
            [round(float(lp), 4) for lp in explanation.logprobs],
            [None if p is None else [round(p[0], 1), round(p[1], 1)] for p in explanation.peaks()],
            np.round(explanation.maps.astype(np.float64), 4).tolist())

    def grid_json(self) -> dict[str, Any]:
        """The maps alone: what the server's answer carries beside its own image and caption."""
        return {"words": self.words, "view_size": self.view_size, "grid": self.grid,
                "logprobs": self.logprobs, "peaks": self.peaks, "maps": self.maps}

    def to_json(self) -> dict[str, Any]:
        return {"schema_version": MAPS_VERSION, "image": self.image, "caption": self.caption,
                **self.grid_json(), "files": self.files}

    @classmethod
    def from_json(cls, data: Any, where: str | Path) -> WordMaps:
        """The maps in `data` (a parsed maps.json); `where` names the file in errors."""
        check_record(data, where, "maps.json", MAPS_VERSION, again="explain again")
        try:
            return cls(data["image"], data["caption"], data["words"], data["view_size"],
                       data["grid"], data["logprobs"], data["peaks"], data["maps"],
                       data.get("files", []))
        except KeyError as err:
            raise CaptionerError(f"{where}: not a captioner maps.json (no {err})") from err

    @classmethod
    def read(cls, path: Path) -> WordMaps:
        return cls.from_json(read_json(path, path.read_text()), path)


def write_explanation(folder: str | Path, name: str, explanation: Explanation,
                      size: int = 224) -> list[Path]:
    """Write one caption's overlays, strip and maps JSON into `folder` (created); returns the
    files. A folder that holds anything but an earlier explanation is refused, and files of an
    earlier explanation that this one does not rewrite are removed."""
    folder = Path(folder)
    files = [folder / f"{t + 1:02d}-{_safe(word)}.png" for t, word in enumerate(explanation.words)]
    files.append(folder / "strip.png")
    names = tuple(sorted({p.name for p in files} | {MAPS_FILE} | _present(folder)))
    earlier = claim_out_dir(folder, names, command=_COMMAND, option="--explain")
    for t, path in enumerate(files[:-1]):
        _save_png(overlay(explanation, t, size), path)
    _save_png(strip(explanation), folder / "strip.png")
    record = replace(WordMaps.of(name, explanation), files=[p.name for p in files])
    write_json(folder / MAPS_FILE, record.to_json())
    written = (*(p.name for p in files), MAPS_FILE)
    # Only files the mark proves an earlier explanation wrote go (maps.json's list proves nothing).
    for stale in earlier - set(written):
        (folder / stale).unlink(missing_ok=True)
    seal_out_dir(folder, written, command=_COMMAND)
    return [*files, folder / MAPS_FILE]


def folder_names(images: Sequence[str]) -> list[str]:
    """One folder name per image name, unique: the file's stem in safe characters, "-2", "-3"
    ... after repeats ("a/x.png" and "b/x.jpg" become "x" and "x-2")."""
    names: list[str] = []
    taken: set[str] = set()
    for image in images:
        stem = _safe(Path(image).stem) or "image"
        name, n = stem, 1
        while name in taken:
            n += 1
            name = f"{stem}-{n}"
        taken.add(name)
        names.append(name)
    return names


def _present(folder: Path) -> set[str]:
    """What the folder holds beside the mark and killed writes' temporary files."""
    if not folder.is_dir() or folder.is_symlink():
        return set()
    return {p.name for p in folder.iterdir()
            if p.name != MARK and not (p.name.startswith(".") and p.name.endswith(TEMP_SUFFIX))}


def _save_png(image: Image.Image, path: Path) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=14)
    except TypeError:  # Pillow < 10.1 has only its fixed bitmap font
        return ImageFont.load_default()
