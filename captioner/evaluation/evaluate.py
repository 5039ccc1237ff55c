"""Evaluating a checkpoint on a split: decode every image, score, and write the report."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm import tqdm

from captioner.data.coco import ImageRecord
from captioner.data.prepare import prepare
from captioner.errors import Interrupted
from captioner.evaluation.gallery_maps import GalleryMaps
from captioner.evaluation.records import EvaluationMetrics
from captioner.evaluation.report import REPORT_FILES, ImageResult, write_report
from captioner.features.cache import FeatureStore
from captioner.features.extract import split_features
from captioner.model.inference import Captioner
from captioner.util.console import bars, counted, say
from captioner.util.paths import check_out_dir
from captioner.util.runs import run_dir_of


def default_out_dir(checkpoint: Path, split: str) -> Path:
    run_dir = run_dir_of(checkpoint)
    return (run_dir if run_dir else Path.cwd()) / f"eval-{split}"


def caption_split(captioner: Captioner, records: Sequence[ImageRecord], store: FeatureStore,
                  beam_size: int) -> dict[int, str]:
    """image id -> best beam-search caption, decoded from cached features in batches."""
    config, predictions = captioner.config, {}
    batches = range(0, len(records), config.eval.batch_size)
    for start in tqdm(batches, desc=f"captioning (beam {beam_size})", unit="batch", file=sys.stderr,
                      disable=not bars()):
        chunk = records[start:start + config.eval.batch_size]
        captions = captioner.caption_features(torch.stack([store[r.image_id] for r in chunk]),
                                              beam_size=beam_size,
                                              length_penalty=config.eval.length_penalty)
        predictions.update((r.image_id, c[0].text) for r, c in zip(chunk, captions))
    return predictions


def evaluate(
    checkpoint: Path, *, split: str | None = None, out_dir: Path | None = None,
    beam_size: int | None = None, limit: int | None = None, worst: int | None = None,
    device: str = "auto", captioner: Captioner | None = None, explain: bool = True,
) -> tuple[EvaluationMetrics, Path]:
    """Caption `split` with `checkpoint` (beam search), score it and write the report into out_dir;
    `explain` draws where the model looked for the gallery's chosen words (Grad-CAM)."""
    captioner = captioner or Captioner.from_checkpoint(checkpoint, device)
    config = captioner.config
    split = split or config.eval.split
    beam_size = beam_size or config.eval.beam_size
    out_dir = out_dir or default_out_dir(checkpoint, split)
    check_out_dir(out_dir, REPORT_FILES, command="evaluation")  # before the work
    again = ["--checkpoint", checkpoint.resolve(), "--split", split, "--out", out_dir.resolve(),
             "--beam-size", beam_size, *(["--limit", limit] if limit else []),
             *(["--worst", worst] if worst else []), *(["--device", device] if device != "auto" else [])]
    with _interrupt_says_what_is_kept(out_dir, again):
        return _evaluate(checkpoint, captioner, split, out_dir, beam_size, limit, worst, explain)


@contextmanager
def _interrupt_says_what_is_kept(out_dir: Path, again: list[object]) -> Iterator[None]:
    """Ctrl-C as one line saying what is left and the evaluation to run again (also a stage's
    Interrupted, whose way to continue, the same command again, would train again)."""
    try:
        yield
    except (KeyboardInterrupt, Interrupted):
        command = shlex.join(["captioner", "evaluate", *map(str, again)])
        raise Interrupted(f"interrupted while evaluating; no complete report was written to "
                          f"{out_dir.resolve()}: continue with: {command}") from None


def _evaluate(checkpoint: Path, captioner: Captioner, split: str, out_dir: Path, beam_size: int,
              limit: int | None, worst: int | None, explain: bool) -> tuple[EvaluationMetrics, Path]:
    config = captioner.config
    data = prepare(config)
    records = data.split(split)[:limit] if limit else data.split(split)

    say(f"evaluating on {counted(len(records), split + ' image')}")
    # Features go through the cache: evaluating again (another beam size, say) skips the CNN, and
    # a frozen run's test features were extracted like its training features, in its precision.
    store = split_features(config, data, captioner.model.encoder, split, records=records,
                           device=captioner.device)
    records = [r for r in records if r.image_id in store.row]
    say(f"captioning {counted(len(records), 'image')} with beam {beam_size}")
    predictions = caption_split(captioner, records, store, beam_size)
    results = [ImageResult(r.image_id, r.path, predictions[r.image_id], list(r.captions))
               for r in records]

    objects = None
    if data.instances:
        from captioner.evaluation.mentions import load_object_index

        objects = load_object_index(data.instances)
    run_dir = run_dir_of(checkpoint)
    metrics_csv = run_dir / "logs" / "metrics.csv" if run_dir else None
    train_captions = {c for r in data.split("train") for c in r.captions}  # raw: the report normalises
    say("scoring (BLEU, CIDEr-D, ROUGE-L" + (", METEOR" if config.eval.meteor else "")
        + (f", {config.eval.bootstrap} bootstrap resamples" if config.eval.bootstrap else "")
        + ") and writing the report")
    metrics = write_report(
        out_dir, results, train_captions=train_captions, objects=objects,
        metrics_csv=metrics_csv if metrics_csv and metrics_csv.exists() else None,
        worst=worst or config.eval.worst, meteor=config.eval.meteor, bootstrap=config.eval.bootstrap,
        extra={"checkpoint": str(checkpoint), "split": split, "beam_size": beam_size,
               "images": len(results)},
        gallery_maps=GalleryMaps(captioner, {r.image_id: r.path for r in records}) if explain else None,
    )
    say(f"evaluated {counted(len(results), split + ' image')} -> {out_dir.resolve()}")
    return metrics, out_dir
