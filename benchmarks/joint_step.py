"""One joint training step of the shapes default (CNN and decoder together): fc6 pooled vs folded.

    pooled: conv grid -> adaptive pool to 7x7 -> fc6 (103M weights, re-cast to bf16 each step)
    folded: VGGEncoder.forward: the fixed fc6 folded onto the 2x2 grid of a 64 px image

The real CaptionModule of the default config (VGG11-BN from scratch, 64 px, fc6/fc7 fixed, LSTM
512), 32 images x 5 captions, caption + concept loss, bf16 autocast where fast, fused Adam.
Median of the timed steps, the two ways interleaved so that machine noise hits both.

    python benchmarks/joint_step.py [--steps 8]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from machine import describe  # benchmarks/ is on sys.path as a script

from captioner.config import Config, to_dict
from captioner.encoder import VGGEncoder, fast_bf16
from captioner.module import CaptionModule

VOCAB, IMAGES, PER_IMAGE, CONCEPTS = 40, 32, 5, 30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="timed steps per way (after 2 warm-up)")
    args = parser.parse_args()
    torch.manual_seed(0)
    config = Config()
    vocab = ["<pad>", "<start>", "<end>", "<unk>"] + [f"w{i}" for i in range(VOCAB - 4)]
    module = CaptionModule(to_dict(config), vocab, pretrained=False,
                           concepts=[f"c{i}" for i in range(CONCEPTS)])
    params = [p for p in module.parameters() if p.requires_grad]  # fc6/fc7 fixed (fc_lr=0)
    optimizer = torch.optim.Adam(params, lr=1e-4, fused=True)
    size = config.encoder.image_size
    batch = {
        "input": torch.randn(IMAGES, 3, size, size),
        "captions": torch.randint(4, VOCAB, (IMAGES, PER_IMAGE, 14)),
        "concepts": (torch.rand(IMAGES, CONCEPTS) < 0.2).float(),
    }
    batch["captions"][:, :, 0] = 1  # <start>
    bf16 = fast_bf16(torch.device("cpu"))
    folded_forward = VGGEncoder.forward

    def pooled_forward(self: VGGEncoder, images: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.features(images)), 1))

    def step(forward) -> float:
        VGGEncoder.forward = forward
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            features = module._encode(batch["input"])
            concept = module._concept_loss(batch, features)
            loss = module._loss(batch, features) + config.optim.concept_weight * concept
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return time.perf_counter() - start

    print(f"machine: {describe()}")
    ways = {"pooled": pooled_forward, "folded": folded_forward}
    times: dict[str, list[float]] = {name: [] for name in ways}
    for i in range(args.steps + 2):
        for name, forward in ways.items():
            elapsed = step(forward)
            if i >= 2:
                times[name].append(elapsed)
    VGGEncoder.forward = folded_forward
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, median in medians.items():
        print(f"{name}: {median:.3f} s/step (median of {args.steps}; {IMAGES} images x {PER_IMAGE} captions, "
              f"{size} px, bf16 {'on' if bf16 else 'off'})")
    print(f"speed-up: {medians['pooled'] / medians['folded']:.2f}x")


if __name__ == "__main__":
    main()
