"""Freezing the fine-tuned CNN mid-run (encoder.freeze_after_epoch): what changes, epoch by epoch.

One real tiny run (VGG11-BN, Lightning Trainer, 3 epochs, the CNN frozen after the first):
- the CNN's learning rates finish their one-cycle inside its window; the decoder's runs on;
- the auxiliary concept loss, whose only job is the CNN, stops;
- the first frozen epoch computes each image's fc7 once; later epochs neither run the CNN nor
  decode images, and batch captions from distinct images.
"""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import TINY
from test_data import write_coco_style

from captioner.config import load_config
from captioner.data import datamodule
from captioner.data.coco import load_records
from captioner.data.datamodule import CaptionSet
from captioner.data.tokenize import tokenize
from captioner.data.vocab import Vocabulary
from captioner.encoder import VGGEncoder
from captioner.module import CaptionModule
from captioner.training import RUN_DIR_ENV, DecoderOnlyBatches, train

TRAIN, VAL = 16, 6  # the tiny set: all of each split fits in the epoch (2 batches of 8) / 1 batch


@pytest.fixture(scope="module")
def frozen_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    mp = pytest.MonkeyPatch()
    encoded, decoded, batches = [], [], []
    forward, open_rgb = VGGEncoder.forward, datamodule.open_rgb
    training_step = CaptionModule.training_step

    def recording_step(self, batch, batch_idx):
        batches.append((self.current_epoch, tuple(batch["captions"].shape[:2]),
                        len(set(batch["image_id"].tolist()))))
        return training_step(self, batch, batch_idx)

    def counting_forward(self, x):
        encoded.append(x.shape[0])
        return forward(self, x)

    def counting_open(path):
        decoded.append(path)
        return open_rgb(path)

    mp.setattr(VGGEncoder, "forward", counting_forward)
    mp.setattr(datamodule, "open_rgb", counting_open)
    mp.setattr(CaptionModule, "training_step", recording_step)
    mp.delenv(RUN_DIR_ENV, raising=False)  # train() records its run folder there for DDP ranks
    out = tmp_path_factory.mktemp("frozen")
    config = load_config(None, [*TINY, "trainer.max_epochs=3", "encoder.freeze_after_epoch=1",
                                "trainer.log_every_n_steps=1", f"output_dir={out}"])
    try:
        result = train(config, evaluate_after=False)
    finally:
        mp.undo()
    rows = list(csv.DictReader((result.run_dir / "logs" / "metrics.csv").open()))
    return {"encoded": sum(encoded), "decoded": len(decoded), "rows": rows, "batches": batches}


def _values(rows: list[dict], key: str) -> dict[int, float]:
    return {int(r["step"]): float(r[key]) for r in rows if r.get(key)}


def test_the_cnn_runs_and_images_load_until_every_feature_is_remembered(frozen_run: dict) -> None:
    # sanity check (VAL), epoch 0 (TRAIN + VAL), epoch 1, frozen: once more to remember; epoch 2: none
    expected = VAL + 2 * (TRAIN + VAL)
    assert frozen_run["encoded"] == expected
    assert frozen_run["decoded"] == expected


def test_batches_hold_captions_of_distinct_images_once_features_are_remembered(frozen_run: dict) -> None:
    # data.batch_size=8 images x 5 captions while images load; then the same 40 captions per
    # batch, one per item, drawn from all 16 images' 80 captions: from more than 8 images.
    batches = frozen_run["batches"]
    assert [(shape, ids) for epoch, shape, ids in batches if epoch < 2] == [((8, 5), 8)] * 4
    assert [shape for epoch, shape, _ in batches if epoch == 2] == [(40, 1)] * 2
    assert all(ids > 8 for epoch, _, ids in batches if epoch == 2)


def test_the_cnns_cycle_ends_at_the_freeze_and_the_decoders_goes_on(frozen_run: dict) -> None:
    convs = _values(frozen_run["rows"], "lr-Adam/convs")
    decoder = _values(frozen_run["rows"], "lr-Adam/decoder")
    steps_per_epoch = 2
    assert max(convs) == max(decoder) == 3 * steps_per_epoch - 1
    frozen = [s for s in convs if s >= steps_per_epoch]
    assert frozen and all(convs[s] < 1e-7 for s in frozen)  # annealed to ~0 by the freeze
    assert max(decoder[s] for s in frozen) > 1e-4  # still learning


def test_the_concept_loss_stops_with_the_cnn(frozen_run: dict) -> None:
    steps = _values(frozen_run["rows"], "train/concept_loss")
    assert steps and max(steps) < 2  # logged in epoch 0's two steps only
    assert max(_values(frozen_run["rows"], "train/loss")) == 5  # while the captions train on


def test_ranks_switch_to_caption_batches_only_together(tmp_path: Path) -> None:
    """Batching by caption changes the training set's length, which DDP ranks must agree on: one
    rank that still lacks some features keeps every rank batching by image."""
    write_coco_style(tmp_path)
    records = load_records(tmp_path, "dataset_coco.json", ["annotations/captions_all.json"])
    vocab = Vocabulary.build([tokenize(c) for r in records for c in r.captions], min_count=1)
    train_set, val_set = (CaptionSet(records, lambda r: None, vocab, 20, 5) for _ in range(2))
    module = SimpleNamespace(remembers=lambda ids: True)  # this rank has every feature
    for others_agree in (False, True):
        strategy = SimpleNamespace(reduce_boolean_decision=lambda mine, all, ok=others_agree: mine and ok)
        DecoderOnlyBatches(train_set, val_set).on_train_epoch_end(SimpleNamespace(strategy=strategy), module)
        assert train_set.by_caption is others_agree and train_set.load_inputs is not others_agree
