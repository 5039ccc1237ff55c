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
init, from --seed, which must differ from the run's trainer.seed: with pretrain.train_fc=false,
fc6 and fc7 never train, and that seed would rebuild them exactly). Spearman's rank correlation between
each word's trained and randomised maps: near 1 means the maps do not depend on those weights.
Pointing is scored for them too. See captioner/model/explain_checks.py.

    python benchmarks/pointing_game.py --checkpoint runs/shapes/checkpoints/best.ckpt \\
        --dataset ~/.cache/captioner/shapes/<hash> [--limit 250] [--device cpu]

(with the package installed, or PYTHONPATH=. from a source checkout)
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections import Counter
from pathlib import Path

import torch
from machine import describe  # benchmarks/ is on sys.path as a script

from captioner.data.instances import load_scenes
from captioner.model.explain import Explanation
from captioner.model.explain_checks import (
    POINTERS,
    pointing_game,
    randomised,
    rank_correlations,
)
from captioner.model.inference import Captioner

LABELS = {"fc": "fc6+fc7 re-initialised", "convs": "convs re-initialised",
          "all": "whole encoder re-initialised"}


def print_pointing(label: str, tally: Counter) -> None:
    for kind in ("colour", "shape"):
        words = tally[kind, "words"]
        rates = ", ".join(f"{name} {tally[kind, name] / max(words, 1):.1%}" for name in POINTERS)
        print(f"  {label}, {kind} words ({words}; {tally[kind, 'names nothing']} name nothing in "
              f"the scene, {tally[kind, 'all-zero map']} all-zero maps): {rates}")


def print_randomisation(trained: list[Explanation | None], other: list[Explanation | None]) -> None:
    rhos = rank_correlations(trained, other)
    valid = [r for r in rhos if not math.isnan(r)]
    same_peak = [int(a.argmax() == b.argmax()) for mine, theirs in zip(trained, other, strict=True)
                 if mine is not None and theirs is not None
                 for a, b in zip(mine.maps, theirs.maps, strict=True)]
    print(f"  Spearman rho median {statistics.median(valid):.2f}, mean {statistics.mean(valid):.2f} "
          f"over {len(valid)} words ({len(rhos) - len(valid)} with a constant map left out); "
          f"same peak cell {statistics.mean(same_peak):.1%}")


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

    dataset = args.dataset.expanduser()
    scenes = load_scenes(dataset / "annotations" / "instances_test.json",
                         dataset / "images" / "test")[:args.limit]
    captioner = Captioner.from_checkpoint(args.checkpoint, device=args.device)
    if args.seed == captioner.config.trainer.seed:
        # The run drew its untrained weights (fc6, fc7 unless pretrain.train_fc) from this seed.
        parser.error(f"--seed {args.seed} is the run's trainer.seed: re-initialising would "
                     "restore its untrained weights exactly; choose another")
    encoder = captioner.config.encoder
    paths = [scene.image for scene in scenes]
    results = captioner.caption(paths)
    explanations = captioner.explain(paths, results)
    print(f"machine: {describe(args.device)}")
    print(f"checkpoint: {args.checkpoint} ({encoder.arch}, {encoder.image_size} px); "
          f"{len(scenes)} test scenes, beam 3; hit rates:")
    print_pointing("trained", pointing_game(scenes, explanations, encoder.resize_size,
                                            encoder.image_size))
    for which, label in LABELS.items():
        shuffled = randomised(captioner, which, args.seed)
        other = shuffled.explain(paths, results)  # the trained model's words
        print(f"{label}:")
        print_randomisation(explanations, other)
        print_pointing(label, pointing_game(scenes, other, encoder.resize_size, encoder.image_size))


if __name__ == "__main__":
    main()
