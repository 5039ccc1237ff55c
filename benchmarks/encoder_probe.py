"""How fast does a VGG learn the shapes set from scratch? A supervised probe, no decoder.

Trains the encoder (convs at --lr, fc6/fc7 at --fc-lr; 0 keeps them fixed, as the default
`captioner train` does) with a linear head on fc7 that predicts which (colour, shape) pairs are in
the image (multi-label, from the instances annotations), and prints the validation pair-F1 as
training goes. A quick way to compare encoder settings before a full `captioner train`.

    python benchmarks/encoder_probe.py [--size 64] [--lr 3e-4] [--fc-lr 0] [--steps 150] [--batch 32]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from machine import describe  # benchmarks/ is on sys.path as a script
from PIL import Image
from torch.nn import functional as F

from captioner.data.shapes import ShapesSpec, ensure_shapes
from captioner.encoder import build_encoder, build_preprocess
from captioner.schedule import one_cycle


def load(root: Path, split: str, size: int, pairs: list[str] | None = None):
    instances = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
    names = {c["id"]: c["name"] for c in instances["categories"]}
    labels: dict[int, set[str]] = {}
    for a in instances["annotations"]:
        labels.setdefault(a["image_id"], set()).add(f'{a["attributes"]["colour"]} {names[a["category_id"]]}')
    files = {im["id"]: im["file_name"] for im in instances["images"]}
    ids = sorted(labels)
    preprocess = build_preprocess("vgg11_bn", size, size)
    images = torch.stack([preprocess(Image.open(root / "images" / split / files[i]).convert("RGB"))
                          for i in ids])
    pairs = pairs or sorted({p for s in labels.values() for p in s})
    targets = torch.zeros(len(ids), len(pairs))
    for row, i in enumerate(ids):
        for p in labels[i]:
            targets[row, pairs.index(p)] = 1.0
    return images.contiguous(memory_format=torch.channels_last), targets, pairs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vgg11_bn")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--fc-lr", type=float, default=0.0)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--reports", type=int, default=3, help="validation reports during training")
    parser.add_argument("--optim", choices=("adam", "sgd"), default="adam")
    parser.add_argument("--schedule", choices=("constant", "onecycle"), default="constant",
                        help="onecycle: warm up over 30%% of the steps, then anneal to ~0")
    args = parser.parse_args()
    torch.manual_seed(0)
    root = ensure_shapes(ShapesSpec())
    x_train, y_train, pairs = load(root, "train", args.size)
    x_val, y_val, _ = load(root, "val", args.size, pairs)
    encoder = build_encoder(args.arch, "none").train().to(memory_format=torch.channels_last)
    encoder.fc.requires_grad_(args.fc_lr > 0)
    encoder.fc.train(args.fc_lr > 0)
    head = torch.nn.Linear(4096, len(pairs))
    groups = [{"params": encoder.features.parameters(), "lr": args.lr},
              {"params": head.parameters(), "lr": 1e-3 if args.optim == "adam" else args.lr}]
    if args.fc_lr > 0:
        groups.append({"params": encoder.fc.parameters(), "lr": args.fc_lr})
    if args.optim == "adam":
        optimizer = torch.optim.Adam(groups, fused=True)
    else:
        optimizer = torch.optim.SGD(groups, momentum=0.9, nesterov=True, fused=True)
    scheduler = (torch.optim.lr_scheduler.LambdaLR(optimizer, one_cycle(args.steps, 0.3))
                 if args.schedule == "onecycle" else None)
    print(f"machine: {describe()}")

    def val_f1() -> float:
        encoder.eval()
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
            predicted = head(encoder(x_val)).float() > 0
        encoder.train()
        encoder.fc.train(args.fc_lr > 0)
        hits = (predicted & (y_val > 0)).sum().item()
        precision, recall = hits / max(predicted.sum().item(), 1), hits / y_val.sum().item()
        return 2 * precision * recall / max(precision + recall, 1e-9)

    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        rows = torch.randint(0, len(x_train), (args.batch,))
        with torch.autocast("cpu", torch.bfloat16):
            logits = head(encoder(x_train[rows]))
        loss = F.binary_cross_entropy_with_logits(logits.float(), y_train[rows])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if scheduler is not None:
            scheduler.step()
        if step % max(args.steps // args.reports, 1) == 0:
            print(f"{args.arch} {args.size}px {args.optim} {args.schedule} lr {args.lr:g} "
                  f"fc_lr {args.fc_lr:g} batch {args.batch}: "
                  f"step {step} ({time.perf_counter() - start:.0f} s) loss {loss.item():.3f} "
                  f"val pair-F1 {val_f1():.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
