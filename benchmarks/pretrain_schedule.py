"""Pretraining at a schedule of resolutions: what a cheaper pretraining learns, in a bare loop.

Trains the default classifier (encoder.arch, fixed random fc6/fc7, a head of the shapes' 18 pairs
with its biases at their frequencies, Adam with a one-cycle schedule at pretrain.lr) on the
shapes training images, each phase at its own size, then scores the classifier on the val split
at the last size and saves the encoder for `pair_probe.py --encoder`. Images are decoded once and
kept, so only the network's time is measured. The phases are SIZE:EPOCHS (fractions allowed):

    python benchmarks/pretrain_schedule.py 64:5                 # the default's schedule
    python benchmarks/pretrain_schedule.py 32:3 64:1 --out /tmp/enc.pth
    python benchmarks/pretrain_schedule.py 64:4 encoder.arch=vgg11_bn pretrain.lr=2e-3   # other settings
    python benchmarks/pair_probe.py --encoder /tmp/enc.pth
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from machine import describe  # benchmarks/ is on sys.path as a script
from torch.nn import functional as F

from captioner.config import load_config
from captioner.data.images import open_rgb
from captioner.data.prepare import prepare
from captioner.model.encoder import build_encoder, build_preprocess, export_weights
from captioner.training.pretrain import image_labels, labelled
from captioner.training.schedule import one_cycle
from captioner.util.hardware import uses_bf16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("items", nargs="+", metavar="SIZE:EPOCHS|KEY=VALUE",
                        help="the phases in order, then any config overrides")
    parser.add_argument("--out", type=Path, default=Path("pretrained-encoder.pth"))
    args = parser.parse_args()
    overrides = [item for item in args.items if "=" in item]
    named = [item for item in args.items if "=" not in item]
    phases = [(int(size), float(epochs)) for size, epochs in (p.split(":") for p in named)]
    config = load_config(None, overrides)
    p, arch, bf16 = config.pretrain, config.encoder.arch, uses_bf16(config)
    data = prepare(config)
    labels = image_labels(data, p.targets)
    train, train_targets, targets = labelled(data, "train", labels, None, False)
    val, val_targets, _ = labelled(data, "val", labels, targets, False)
    print(f"machine: {describe()}; {'bf16' if bf16 else 'fp32'}")
    decoded = [open_rgb(r.path) for r in train]
    images = {size: torch.stack([build_preprocess(arch, size, size)(im) for im in decoded])
              for size in {size for size, _ in phases}}
    y = torch.stack(train_targets)

    torch.manual_seed(config.trainer.seed)
    encoder = build_encoder(arch, "none", seed=config.trainer.seed)
    encoder.to(memory_format=torch.channels_last)
    encoder.fc.requires_grad_(False).eval()
    head = torch.nn.Linear(4096, y.shape[1])
    share = y.mean(0).clamp(1e-3, 1 - 1e-3)
    head.bias.data = torch.log(share / (1 - share))
    optimizer = torch.optim.Adam([*encoder.features.parameters(), *head.parameters()], lr=p.lr, fused=True)
    steps = [int(epochs * len(y)) // p.batch_size for _, epochs in phases]
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, one_cycle(sum(steps), p.warmup))
    generator = torch.Generator().manual_seed(config.trainer.seed)
    start = time.perf_counter()
    for (size, _), count in zip(phases, steps):
        done = 0
        while done < count:
            order = torch.randperm(len(y), generator=generator)
            for i in range(0, len(y) - p.batch_size + 1, p.batch_size):
                if done == count:
                    break
                batch = order[i:i + p.batch_size]
                encoder.features.train()
                inputs = images[size][batch].contiguous(memory_format=torch.channels_last)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    logits = head(encoder(inputs).float())
                F.binary_cross_entropy_with_logits(logits, y[batch]).backward()
                optimizer.step()
                optimizer.zero_grad()
                schedule.step()
                done += 1
    seconds = time.perf_counter() - start

    size = phases[-1][0]
    preprocess = build_preprocess(arch, size, size)
    x = torch.stack([preprocess(open_rgb(r.path)) for r in val])
    encoder.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = torch.cat([head(encoder(x[i:i + 64].contiguous(memory_format=torch.channels_last)).float())
                            for i in range(0, len(x), 64)])
    predicted, actual = logits > 0, torch.stack(val_targets) > 0
    f1 = 2 * (predicted & actual).sum().item() / (predicted.sum().item() + actual.sum().item())
    export_weights(encoder, args.out, {"arch": arch, "image_size": size, "resize_size": size})
    print(f"phases {' '.join(named)}: {sum(steps)} steps in {seconds:.0f} s; classifier val F1 "
          f"{f1:.3f}; encoder -> {args.out} (next: pair_probe.py --encoder {args.out})")


if __name__ == "__main__":
    main()
