"""Does the model say what is in the picture? (colour, shape) F1 on fresh scenes.

Renders scenes with benchmarks/fresh_scenes.py (an independent renderer, not the dataset
generator), captions them, parses the (colour, shape) pairs each caption names and scores them
against the pairs present: micro-averaged precision, recall and F1 over sets per image.

    python benchmarks/shapes_quality.py [--checkpoint runs/shapes/checkpoints/best.ckpt] [--n 300]
        [--max-objects N]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fresh_scenes import render_scenes  # noqa: E402

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--beam-size", type=int, default=3)
    parser.add_argument("--show", type=int, default=5, help="print this many example captions")
    parser.add_argument("--max-objects", type=int, default=None,
                        help="objects per scene, at most (default: the checkpoint's data.shapes.max_objects)")
    args = parser.parse_args()
    checkpoint = args.checkpoint or latest_checkpoint()
    captioner = Captioner.from_checkpoint(checkpoint, device="cpu")
    size = captioner.config.data.shapes.size
    max_objects = args.max_objects or captioner.config.data.shapes.max_objects
    scenes = render_scenes(args.n, seed=args.seed, size=size, max_objects=max_objects)
    start = time.perf_counter()
    results = captioner.caption([image for image, _ in scenes], beam_size=args.beam_size)
    seconds = time.perf_counter() - start
    predicted = [shape_mentions(r.tokens or []) for r in results]
    present = [{f"{c} {s}" for c, s in objects} for _, objects in scenes]
    scores = pair_f1(predicted, present)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    print(f"checkpoint: {checkpoint}")
    print(f"{args.n} fresh scenes of 1-{max_objects} objects at {size}px, beam {args.beam_size}: "
          f"captioned in {seconds:.1f} s")
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
