"""Does the model say what is in the picture? (colour, shape) F1 on fresh scenes.

Renders scenes with benchmarks/fresh_scenes.py (an independent renderer, not the dataset
generator), captions them, parses the (colour, shape) pairs each caption names and scores them
against the pairs present: micro-averaged precision, recall and F1 over sets per image.

    python benchmarks/shapes_quality.py [--checkpoint runs/shapes/checkpoints/best.ckpt] [--n 300]
        [--max-objects N] [--against OTHER.ckpt] [--renderer independent|dataset]

With --against, the other checkpoint captions the same scenes and the F1 difference (checkpoint
minus other) gets a paired 95% bootstrap interval over scenes: whether one names pairs better.
With --renderer dataset the scenes come from the package's own generator (another seed, so
images the model has not seen, but drawn as its training images were): a difference there and
not with the independent renderer would be the renderer's quirks, not the model's reading.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fresh_scenes import Scene, render_scenes  # noqa: E402

from captioner.data.instances import instance_labels  # noqa: E402
from captioner.data.shapes import ShapesSpec, generate_shapes  # noqa: E402
from captioner.evaluation.mentions import shape_mentions  # noqa: E402
from captioner.model.inference import Captioner  # noqa: E402
from captioner.util.runs import latest_checkpoint  # noqa: E402


def pair_f1(predicted: list[set[str]], present: list[set[str]]) -> dict[str, float]:
    tp = sum(len(p & g) for p, g in zip(predicted, present))
    n_pred, n_true = sum(map(len, predicted)), sum(map(len, present))
    precision, recall = tp / max(n_pred, 1), tp / max(n_true, 1)
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    return {"precision": precision, "recall": recall, "f1": f1,
            "exact": sum(p == g for p, g in zip(predicted, present)) / len(present)}


def paired_f1_interval(a: list[set[str]], b: list[set[str]], present: list[set[str]],
                       resamples: int = 1000) -> tuple[float, float, float]:
    """F1(a) - F1(b) on the same scenes and its 95% percentile-bootstrap interval, resampling
    scenes with replacement (seed 0); micro F1 = 2 TP / (predicted + present)."""
    def counts(predicted: list[set[str]]) -> torch.Tensor:
        return torch.tensor([[len(p & g), len(p) + len(g)] for p, g in zip(predicted, present)],
                            dtype=torch.float64)

    ca, cb = counts(a), counts(b)
    rows = torch.randint(len(present), (resamples, len(present)), generator=torch.Generator().manual_seed(0))

    def f1(summed: torch.Tensor) -> torch.Tensor:
        return 2 * summed[..., 0] / summed[..., 1].clamp(min=1)

    delta = (f1(ca.sum(0)) - f1(cb.sum(0))).item()
    low, high = (f1(ca[rows].sum(1)) - f1(cb[rows].sum(1))).quantile(
        torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return delta, low, high


def dataset_scenes(n: int, seed: int, size: int, max_objects: int) -> list[Scene]:
    """`n` scenes from captioner.data.shapes itself (its test split at `seed`) and their objects
    as (colour, shape) pairs, read back from the instances file it writes."""
    with tempfile.TemporaryDirectory() as tmp:
        root = generate_shapes(Path(tmp) / "shapes", ShapesSpec(num_train=0, num_val=0, num_test=n, size=size,
                                                                seed=seed, max_objects=max_objects))
        instances = root / "annotations" / "instances_test.json"
        _, labels = instance_labels([instances], "shapes")  # "colour shape" per object, as CHAIR reads them
        scenes = []
        for image in json.loads(instances.read_text())["images"]:
            with Image.open(root / "images" / "test" / image["file_name"]) as picture:
                objects = [tuple(label.split()) for label in labels[image["id"]]]
                scenes.append((picture.convert("RGB"), objects))
        return scenes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--beam-size", type=int, default=3)
    parser.add_argument("--show", type=int, default=5, help="print this many example captions")
    parser.add_argument("--max-objects", type=int, default=None,
                        help="objects per scene, at most (default: the checkpoint's data.shapes.max_objects)")
    parser.add_argument("--against", type=Path, help="another checkpoint: the paired F1 difference")
    parser.add_argument("--renderer", choices=("independent", "dataset"), default="independent",
                        help="draw the scenes with benchmarks/fresh_scenes.py (default) or the package's "
                             "own generator at --seed")
    args = parser.parse_args()
    checkpoint = args.checkpoint or latest_checkpoint()
    captioner = Captioner.from_checkpoint(checkpoint, device="cpu")
    size = captioner.config.data.shapes.size
    max_objects = args.max_objects or captioner.config.data.shapes.max_objects
    draw = render_scenes if args.renderer == "independent" else dataset_scenes
    scenes = draw(args.n, seed=args.seed, size=size, max_objects=max_objects)
    start = time.perf_counter()
    results = captioner.caption([image for image, _ in scenes], beam_size=args.beam_size)
    seconds = time.perf_counter() - start
    predicted = [shape_mentions(r.tokens or []) for r in results]
    present = [{f"{c} {s}" for c, s in objects} for _, objects in scenes]
    scores = pair_f1(predicted, present)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    print(f"checkpoint: {checkpoint}")
    print(f"{args.n} fresh scenes ({args.renderer} renderer) of 1-{max_objects} objects at {size}px, "
          f"beam {args.beam_size}: captioned in {seconds:.1f} s")
    for (_, objects), r in list(zip(scenes, results))[: args.show]:
        print(f"  present {sorted(f'{c} {s}' for c, s in objects)} -> {r.text!r}")
    print("(colour, shape) pairs: " + "  ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    for count in sorted({len(g) for g in present}):
        rows = [i for i, g in enumerate(present) if len(g) == count]
        part = pair_f1([predicted[i] for i in rows], [present[i] for i in rows])
        print(f"  scenes with {count} distinct pair(s) ({len(rows)}): F1 {part['f1']:.3f}")
    # Which half of a wrong pair is wrong: its colour is in the scene (the shape was misbound or
    # misread), its shape is, or neither (something that is not there at all).
    colours = [{p.split()[0] for p in g} for g in present]
    shapes = [{p.split()[1] for p in g} for g in present]
    wrong = [(p.split()[0] in c, p.split()[1] in s)
             for ps, g, c, s in zip(predicted, present, colours, shapes) for p in ps - g]
    print(f"  wrong pairs: {len(wrong)}; colour present, shape wrong {sum(c and not s for c, s in wrong)}; "
          f"both present, not together {sum(c and s for c, s in wrong)}; "
          f"shape present, colour wrong {sum(s and not c for c, s in wrong)}; "
          f"neither {sum(not c and not s for c, s in wrong)}")
    if args.against is not None:
        other = Captioner.from_checkpoint(args.against, device="cpu")
        theirs = [shape_mentions(r.tokens or []) for r in other.caption([image for image, _ in scenes],
                                                                        beam_size=args.beam_size)]
        delta, low, high = paired_f1_interval(predicted, theirs, present)
        print(f"against {args.against}: F1 {pair_f1(theirs, present)['f1']:.3f}; this minus that "
              f"{delta:+.3f}, 95% paired interval over scenes [{low:+.3f}, {high:+.3f}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
