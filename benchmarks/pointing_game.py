"""Are the per-word Grad-CAM maps right, and do they depend on what the model learnt?

Pointing game (Zhang et al. 2016) on the shapes test scenes, whose object boxes and colours are
in annotations/instances_test.json: for each colour word ("red") and shape word ("circles") of
a generated caption that names an object in the scene, the map's peak (the centre of its
highest grid cell, in image pixels) must fall inside the box of an object the word names (any
red object; any circle). Words naming nothing in the scene (hallucinations) are left out and
counted; an all-zero map is a miss. Against: the image's centre point (the bar to beat), a
grid cell drawn at random (expected hit rate), the peak of the mean of the caption's maps (one
point for all its words: if a word's own map does no better, the maps show where the objects
are, not which one the word names), and the ceiling of the grid (some cell centre hits).

Model randomisation (Adebayo et al. 2018): the same captions explained again with the
encoder's fc6+fc7, its convolutions, then all of its layers re-initialised (torchvision's VGG
init, from --seed, which must differ from the run's trainer.seed: with encoder.fc_lr=0, fc6 and
fc7 never train, and that seed would rebuild them exactly). Spearman's rank correlation between
each word's trained and randomised maps: near 1 means the maps do not depend on those weights.
Pointing is scored for them too.

    python benchmarks/pointing_game.py --checkpoint runs/shapes/checkpoints/best.ckpt \\
        --dataset ~/.cache/captioner/shapes/<hash> [--limit 250] [--device cpu]

(with the package installed, or PYTHONPATH=. from a source checkout)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from machine import describe  # benchmarks/ is on sys.path as a script
from pycocotools.coco import COCO

from captioner.data.shapes import COLOURS, SHAPES
from captioner.encoder import build_encoder
from captioner.explain import Explainer, Explanation
from captioner.inference import Captioner
from captioner.model import CaptionModel

Box = tuple[float, float, float, float]  # x, y, width, height in image pixels


@dataclass(frozen=True)
class Scene:
    path: Path
    width: int
    height: int
    objects: list[tuple[str, str, Box]]  # colour, shape, box

    def named_boxes(self, word: str) -> list[Box] | None:
        """Boxes of the objects a colour or shape word names; None for other words."""
        singular = word[:-1] if word.endswith("s") else word
        if word in COLOURS:
            return [box for colour, _, box in self.objects if colour == word]
        if singular in SHAPES:
            return [box for _, shape, box in self.objects if shape == singular]
        return None


def load_scenes(dataset: Path, limit: int) -> list[Scene]:
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco = COCO(str(dataset / "annotations" / "instances_test.json"))
    names = {c["id"]: c["name"] for c in coco.dataset["categories"]}
    scenes = []
    for image in sorted(coco.dataset["images"], key=lambda im: im["id"])[:limit]:
        objects = [(a["attributes"]["colour"], names[a["category_id"]], tuple(a["bbox"]))
                   for a in coco.imgToAnns[image["id"]]]
        scenes.append(Scene(dataset / "images" / "test" / image["file_name"], image["width"],
                            image["height"], objects))
    return scenes


def view_to_image(point: tuple[float, float], scene: Scene, resize: int,
                  crop: int) -> tuple[float, float]:
    """A point of the model's view (shorter side resized to `resize`, centre crop `crop`) in
    the original image's pixels (torchvision's Resize and CenterCrop arithmetic)."""
    scale = resize / min(scene.width, scene.height)
    resized_w, resized_h = int(scene.width * scale), int(scene.height * scale)
    left, top = int(round((resized_w - crop) / 2.0)), int(round((resized_h - crop) / 2.0))
    return ((point[0] + left) * scene.width / resized_w, (point[1] + top) * scene.height / resized_h)


def inside(point: tuple[float, float], boxes: list[Box]) -> bool:
    x, y = point
    return any(bx <= x <= bx + w and by <= y <= by + h for bx, by, w, h in boxes)


def pointing(scenes: list[Scene], explanations: list[Explanation | None],
             captioner: Captioner) -> Counter:
    """Hits and counts for the maps and the baselines, by word kind (colour / shape)."""
    resize, crop = captioner.config.encoder.resize_size, captioner.config.encoder.image_size
    tally: Counter = Counter()
    for scene, explanation in zip(scenes, explanations, strict=True):
        if explanation is None or not explanation.words:
            continue
        _, rows, cols = explanation.maps.shape
        cells = [view_to_image(((c + 0.5) * crop / cols, (r + 0.5) * crop / rows), scene, resize,
                               crop) for r in range(rows) for c in range(cols)]
        caption_peak = cells[int(explanation.maps.mean(0).argmax())]
        for word, peak in zip(explanation.words, explanation.peaks(), strict=True):
            boxes = scene.named_boxes(word)
            if boxes is None:
                continue
            kind = "colour" if word in COLOURS else "shape"
            if not boxes:
                tally[kind, "names nothing"] += 1
                continue
            tally[kind, "words"] += 1
            tally[kind, "all-zero map"] += peak is None
            tally[kind, "map"] += peak is not None and inside(view_to_image(peak, scene, resize,
                                                                            crop), boxes)
            tally[kind, "centre"] += inside((scene.width / 2, scene.height / 2), boxes)
            tally[kind, "caption's mean map"] += inside(caption_peak, boxes)
            hits = [inside(cell, boxes) for cell in cells]
            tally[kind, "random cell"] += sum(hits) / len(hits)
            tally[kind, "grid ceiling"] += any(hits)
    return tally


def print_pointing(label: str, tally: Counter) -> None:
    for kind in ("colour", "shape"):
        words = tally[kind, "words"]
        rates = ", ".join(f"{name} {tally[kind, name] / max(words, 1):.1%}"
                          for name in ("map", "caption's mean map", "centre", "random cell",
                                       "grid ceiling"))
        print(f"  {label}, {kind} words ({words}; {tally[kind, 'names nothing']} name nothing in "
              f"the scene, {tally[kind, 'all-zero map']} all-zero maps): {rates}")


def randomised(captioner: Captioner, which: str, seed: int) -> Captioner:
    """The captioner with its encoder's "fc" layers (fc6, fc7), "convs" (with their batch norms)
    or "all" re-initialised as torchvision initialises a VGG."""
    fresh = build_encoder(captioner.config.encoder.arch, "none", seed=seed)
    encoder = copy.deepcopy(captioner.model.encoder)
    if which in ("fc", "all"):
        encoder.fc.load_state_dict(fresh.fc.state_dict())
    if which in ("convs", "all"):
        encoder.features.load_state_dict(fresh.features.state_dict())
    model = CaptionModel(encoder, captioner.model.decoder)
    return Captioner(model, captioner.vocab, captioner.config, captioner.device)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation, ties given their mean rank; NaN when either map is constant."""
    def ranks(x: np.ndarray) -> np.ndarray:
        values, inverse = np.unique(x, return_inverse=True)
        order = np.argsort(x, kind="stable")
        rank = np.empty(len(x))
        rank[order] = np.arange(len(x))
        return (np.bincount(inverse, rank) / np.bincount(inverse))[inverse]

    a, b = a.ravel(), b.ravel()
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def compare_maps(trained: list[Explanation | None], other: list[Explanation | None]) -> str:
    rhos, same_peak = [], []
    for mine, theirs in zip(trained, other, strict=True):
        for t in range(len(mine.words) if mine else 0):
            rhos.append(spearman(mine.maps[t], theirs.maps[t]))
            same_peak.append(mine.maps[t].argmax() == theirs.maps[t].argmax())
    valid = [r for r in rhos if not np.isnan(r)]
    return (f"Spearman rho median {statistics.median(valid):.2f}, mean {statistics.mean(valid):.2f} "
            f"over {len(valid)} words ({len(rhos) - len(valid)} with a constant map left out); "
            f"same peak cell {np.mean(same_peak):.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--dataset", required=True, type=Path,
                        help="a shapes dataset folder (annotations/, images/)")
    parser.add_argument("--limit", type=int, default=250, help="test scenes to use")
    parser.add_argument("--seed", type=int, default=1, help="seed of the re-initialised weights")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    scenes = load_scenes(args.dataset.expanduser(), args.limit)
    captioner = Captioner.from_checkpoint(args.checkpoint, device=args.device)
    if args.seed == captioner.config.trainer.seed:
        # The run drew its untrained weights (fc6, fc7 unless encoder.fc_lr > 0) from this seed.
        parser.error(f"--seed {args.seed} is the run's trainer.seed: re-initialising would "
                     "restore its untrained weights exactly; choose another")
    paths = [s.path for s in scenes]
    results = captioner.caption(paths)
    explanations = Explainer(captioner).explain_results(paths, results)
    grid = explanations[0].maps.shape[1:] if explanations[0] is not None else None
    print(f"machine: {describe(args.device)}")
    print(f"checkpoint: {args.checkpoint} ({captioner.config.encoder.arch}, "
          f"{captioner.config.encoder.image_size} px, grid {grid}); {len(scenes)} test scenes, "
          "beam 3; hit rates:")
    print_pointing("trained", pointing(scenes, explanations, captioner))
    for which, label in (("fc", "fc6+fc7 re-initialised"), ("convs", "convs re-initialised"),
                         ("all", "whole encoder re-initialised")):
        shuffled = randomised(captioner, which, args.seed)
        other = Explainer(shuffled).explain_results(paths, results)  # the trained model's words
        print(f"{label}: {compare_maps(explanations, other)}")
        print_pointing(label, pointing(scenes, other, captioner))


if __name__ == "__main__":
    main()
