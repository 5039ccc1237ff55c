"""Where along the model are the (colour, shape) pairs of a picture still known?

Computes a checkpoint's fc7 (`--at fc7`) or the decoder's initial state built from it (`h0`,
and for an LSTM `c0`: top layer) for fresh scenes (benchmarks/fresh_scenes.py, the independent
renderer), fits a linear multi-label probe on one set and prints its pair-F1 on another. Next to
benchmarks/shapes_quality.py it tells where a shortfall lives: a probe far above the captions'
F1 means the information is there and a later stage loses it; a low probe at fc7 means the CNN.

    python benchmarks/pair_probe.py --checkpoint runs/shapes/checkpoints/best.ckpt [--at fc7|h0|c0]
    python benchmarks/pair_probe.py --encoder runs/shapes-pretrain/encoder.pth   # fc7 of a pretrained encoder
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fresh_scenes import render_scenes  # noqa: E402
from machine import describe  # noqa: E402

from captioner.data.shapes import COLOURS, SHAPES  # noqa: E402
from captioner.model.encoder import build_encoder, build_preprocess, encode  # noqa: E402
from captioner.model.inference import Captioner  # noqa: E402
from captioner.util.runs import latest_checkpoint  # noqa: E402

PAIRS = [f"{c} {s}" for c in COLOURS for s in SHAPES]


class Encoder:
    """fc7 (and the decoder's initial state, from a checkpoint) of PIL images, in fp32."""

    def __init__(self, checkpoint: Path | None, encoder: Path | None) -> None:
        if encoder is not None:
            meta = torch.load(encoder, map_location="cpu", weights_only=True)["captioner"]
            self.captioner = None
            self.encoder = build_encoder(meta["arch"], str(encoder)).eval()
            self.preprocess = build_preprocess(meta["arch"], meta["image_size"], meta["resize_size"])
        else:
            self.captioner = Captioner.from_checkpoint(checkpoint or latest_checkpoint(), device="cpu")

    def __call__(self, images: list, at: str) -> torch.Tensor:
        if self.captioner is None:
            if at != "fc7":
                raise SystemExit(f"--at {at}: an encoder file has no decoder; use --checkpoint")
            return encode(self.encoder, torch.stack([self.preprocess(im) for im in images]), bf16=False)
        captioner = self.captioner
        fc7 = captioner.encode(torch.stack([captioner.load(im) for im in images])).float()
        if at == "fc7":
            return fc7
        state = captioner.model.decoder.initial_state(fc7)
        if at == "c0" and len(state) < 2:
            raise SystemExit(f"--at c0: a {captioner.config.decoder.cell} decoder has no cell state")
        return state[0 if at == "h0" else 1][-1].float()


def features_and_labels(model: Encoder, n: int, seed: int, size: int,
                        at: str) -> tuple[torch.Tensor, torch.Tensor]:
    scenes = render_scenes(n, seed=seed, size=size)
    with torch.inference_mode():
        x = torch.cat([model([im for im, _ in scenes[i:i + 100]], at) for i in range(0, n, 100)])
    y = torch.zeros(n, len(PAIRS))
    for row, (_, objects) in enumerate(scenes):
        for colour, shape in objects:
            y[row, PAIRS.index(f"{colour} {shape}")] = 1.0
    return x, y


def f1(logits: torch.Tensor, y: torch.Tensor) -> float:
    predicted = (logits > 0).float()
    return (2 * (predicted * y).sum() / (predicted.sum() + y.sum())).item()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="default: the latest run's best checkpoint")
    parser.add_argument("--encoder", type=Path, help="an encoder file from `captioner pretrain`")
    parser.add_argument("--size", type=int, default=128, help="scene size in pixels")
    parser.add_argument("--train", type=int, default=3000, help="fresh scenes to fit the probe on")
    parser.add_argument("--test", type=int, default=500, help="fresh scenes to score it on")
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--at", choices=("fc7", "h0", "c0"), default="fc7")
    args = parser.parse_args()
    model = Encoder(args.checkpoint, args.encoder)
    start = time.perf_counter()
    x_train, y_train = features_and_labels(model, args.train, 1, args.size, args.at)
    x_test, y_test = features_and_labels(model, args.test, 2, args.size, args.at)
    print(f"machine: {describe()}")
    print(f"{args.encoder or args.checkpoint or 'latest run'}: {args.at} of {args.train}+{args.test} "
          "fresh scenes in "
          f"{time.perf_counter() - start:.0f} s")
    torch.manual_seed(0)
    probe = torch.nn.Linear(x_train.shape[1], len(PAIRS))
    optimizer = torch.optim.Adam(probe.parameters(), lr=2e-3)
    for step in range(1, args.steps + 1):
        rows = torch.randint(0, len(x_train), (32,))
        loss = F.binary_cross_entropy_with_logits(probe(x_train[rows]), y_train[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % (args.steps // 4) == 0:
            with torch.inference_mode():
                print(f"linear probe on {args.at}, step {step}: (colour, shape) pair-F1 "
                      f"{f1(probe(x_test), y_test):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
