"""Evaluating a checkpoint on a split: decode every image, score, and write the report."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from captioner.data.prepare import cache_dir, prepare
from captioner.features import load_or_extract
from captioner.inference import Captioner
from captioner.report import ImageResult, write_report
from captioner.runs import run_dir_of


def default_out_dir(checkpoint: Path, split: str) -> Path:
    run_dir = run_dir_of(checkpoint)
    return (run_dir if run_dir else Path.cwd()) / f"eval-{split}"


def evaluate(
    checkpoint: Path, *, split: str | None = None, out_dir: Path | None = None,
    beam_size: int | None = None, limit: int | None = None, worst: int | None = None,
    device: str = "auto", captioner: Captioner | None = None,
) -> tuple[dict, Path]:
    """Caption `split` with `checkpoint` (beam search), score it and write the report into out_dir."""
    captioner = captioner or Captioner.from_checkpoint(checkpoint, device)
    config = captioner.config
    split = split or config.eval.split
    beam_size = beam_size or config.eval.beam_size
    out_dir = out_dir or default_out_dir(checkpoint, split)
    data = prepare(config)
    records = data.split(split)[:limit] if limit else data.split(split)

    # Features go through the cache: evaluating again (another beam size, say) skips the CNN.
    store = load_or_extract(
        captioner.model.encoder, captioner.preprocess, records, cache_dir(config), split=split,
        arch=config.encoder.arch, image_size=config.encoder.image_size, dataset=str(data.root),
        batch_size=config.eval.batch_size, num_workers=config.data.num_workers, bf16=captioner.bf16,
    )
    records = [r for r in records if r.image_id in store.row]
    results: list[ImageResult] = []
    batch = config.eval.batch_size
    for start in range(0, len(records), batch):
        chunk = records[start:start + batch]
        features = torch.stack([store[r.image_id] for r in chunk])
        captions = captioner.caption_features(features, beam_size=beam_size,
                                              length_penalty=config.eval.length_penalty)
        results.extend(ImageResult(r.image_id, r.path, c[0].text, list(r.captions))
                       for r, c in zip(chunk, captions))

    objects = None
    if data.instances:
        from captioner.objects import load_object_index

        objects = load_object_index(data.instances)
    run_dir = run_dir_of(checkpoint)
    metrics_csv = run_dir / "logs" / "metrics.csv" if run_dir else None
    train_captions = {c for r in data.split("train") for c in r.captions}  # raw: the report normalises
    metrics = write_report(
        out_dir, results, train_captions=train_captions, objects=objects,
        metrics_csv=metrics_csv if metrics_csv and metrics_csv.exists() else None,
        worst=worst or config.eval.worst, meteor=config.eval.meteor,
        extra={"checkpoint": str(checkpoint), "split": split, "beam_size": beam_size,
               "images": len(results)},
    )
    print(f"evaluated {len(results)} {split} images -> {out_dir}", file=sys.stderr)
    return metrics, out_dir
