"""The typed records the project writes and reads again (evaluation folders, diffs, comparisons,
maps, import reports, a checkpoint's own entries): round trips, the schema version, older files."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from captioner.compare.records import (
    CellFigures,
    CellSummary,
    CompareResult,
    CompareSettings,
    EncoderUsed,
    GradFlow,
    PositionsScored,
    SeedRun,
    Timing,
)
from captioner.compare.seeds import Difference
from captioner.data.importing.report import ImportReport
from captioner.errors import CaptionerError
from captioner.evaluation.diff import load_evaluation
from captioner.evaluation.records import (
    SCHEMA_VERSION,
    CaptionLength,
    CaptionSummary,
    DiffResult,
    DiffSide,
    EvaluationMetrics,
    ImageRecord,
    ImageScores,
    MovedImage,
    ObjectSummary,
    PairedDelta,
    Resampling,
    SideCaption,
    TagChange,
    WordMap,
    per_image_lines,
    read_per_image,
)
from captioner.model.checkpoint import SCHEMA_VERSION as CHECKPOINT_SCHEMA
from captioner.model.checkpoint import CheckpointMeta, load_checkpoint
from captioner.model.explain_files import WordMaps
from captioner.training.pretrain import PRETRAIN_SCHEMA, PretrainMeta

RECORD = ImageRecord(
    7, "images/7.jpg", "a red circle", ["a red circle", "one red circle"],
    ImageScores(cider=1.25, bleu4_smoothed=0.5), hallucinated=["square"], missed=["triangle"],
    mentioned=["circle", "square"], objects_annotated=True, repeated=["red"],
    same_caption_images=3, tags=["hallucination", "missed object"],
    maps=[WordMap("circle", "maps/7-2.png", empty=True)])
METRICS = EvaluationMetrics(
    metrics={"bleu4": 0.25, "cider": 0.75}, intervals={"bleu4": [0.2, 0.3], "cider": None},
    bootstrap=Resampling(1000, "percentile", 0, 0.95, not_resampled={"meteor": "why"}),
    scale="0 to 1", definitions={"cider": "CIDEr-D"},
    summary=CaptionSummary(
        images=1, distinct_captions=1.0, novel_captions=None, vocabulary_used=3,
        reference_vocabulary=4, caption_length=CaptionLength(3.0, 3, 3, 3),
        reference_length_mean=3.5, tags={"hallucination": 1, "generic": 0},
        objects=ObjectSummary("shapes", 1, 2, 0.5, 1.0, 0.5)),
    notes=["METEOR skipped"],
    run={"split": "test"})


def test_a_per_image_record_round_trips() -> None:
    data = json.loads(json.dumps(RECORD.to_json()))
    assert data["schema_version"] == SCHEMA_VERSION
    assert ImageRecord.from_json(data, "here") == RECORD


def test_metrics_round_trip() -> None:
    data = json.loads(json.dumps(METRICS.to_json()))
    assert data["schema_version"] == SCHEMA_VERSION
    assert EvaluationMetrics.from_json(data, "metrics.json") == METRICS
    assert METRICS.chair
    without = replace(METRICS, summary=replace(METRICS.summary, objects=None))
    assert "objects" not in without.to_json()["summary"] and not without.chair
    assert EvaluationMetrics.from_json(without.to_json(), "metrics.json") == without
    off = replace(METRICS, bootstrap=Resampling(0, "switched off"))
    assert off.to_json()["bootstrap"] == {"resamples": 0, "method": "switched off"}
    assert EvaluationMetrics.from_json(off.to_json(), "metrics.json") == off
    del data["summary"]["caption_length"]
    with pytest.raises(CaptionerError, match="metrics.json: not a captioner metrics.json \\(its "
                                             "summary lacks or mistypes 'caption_length'\\)"):
        EvaluationMetrics.from_json(data, "metrics.json")


def _folder(tmp_path: Path, metrics: dict, records: list[dict]) -> Path:
    folder = tmp_path / "eval"
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "per_image.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def test_another_version_is_a_one_line_error_naming_the_file(tmp_path: Path) -> None:
    newer = {**RECORD.to_json(), "schema_version": SCHEMA_VERSION + 1}
    folder = _folder(tmp_path, METRICS.to_json(), [newer])
    with pytest.raises(CaptionerError, match=r"per_image.jsonl:1: a per-image record of schema "
                                             r"version 2; this captioner reads version 1") as err:
        load_evaluation(folder)
    assert "\n" not in str(err.value)
    (folder / "metrics.json").write_text(json.dumps({**METRICS.to_json(), "schema_version": "x"}))
    with pytest.raises(CaptionerError, match=r"metrics.json: metrics.json of schema version 'x'"):
        load_evaluation(folder)


def test_a_file_of_the_version_before_versions_reads_as_version_1(tmp_path: Path) -> None:
    """Reports written before schema_version existed have version 1's fields: still diffable."""
    old_metrics = {k: v for k, v in METRICS.to_json().items() if k != "schema_version"}
    old_record = {k: v for k, v in RECORD.to_json().items() if k != "schema_version"}
    found = load_evaluation(_folder(tmp_path, old_metrics, [old_record]))
    assert found.metrics == METRICS and found.records == [RECORD]


def test_per_image_lines_read_back(tmp_path: Path) -> None:
    path = tmp_path / "per_image.jsonl"
    records = [RECORD, ImageRecord(8, "8.jpg", "", ["a square"], ImageScores(0.0, 0.0))]
    path.write_text(per_image_lines(records) + "\n")
    assert read_per_image(path) == records


DIFF = DiffResult(
    DiffSide("/a", {"split": "test"}), DiffSide("/b", {}), 7,
    Resampling(1000, "paired", 0, 0.95, paired=True, ties="one half"),
    {"cider": PairedDelta(0.5, 0.75, 0.25, [0.125, 0.375], 0.99),
     "meteor": PairedDelta(0.2, 0.25, 0.05, None, None)},
    [MovedImage(7, "7.jpg", ["a red circle"], 0.5, SideCaption.of(RECORD),
                SideCaption(1.75, "one red circle", [], [], [], [], 1))],
    [], {"repetition": TagChange(1, 0, [], [4])}, ["CHAIR: lower is better"])


def test_a_diff_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "diff.json"
    path.write_text(json.dumps(DIFF.to_json()))
    assert json.loads(path.read_text())["schema_version"] == SCHEMA_VERSION
    assert DiffResult.read(path) == DIFF


def test_a_diff_of_another_version_or_shape_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "diff.json"
    path.write_text(json.dumps({**DIFF.to_json(), "schema_version": 0}))
    with pytest.raises(CaptionerError, match=r"diff.json: diff.json of schema version 0; this "
                                             r"captioner reads version 1: run `captioner diff`"):
        DiffResult.read(path)
    path.write_text(json.dumps({k: v for k, v in DIFF.to_json().items() if k != "moved"}))
    with pytest.raises(CaptionerError,
                       match=r"diff.json: not a captioner diff.json \(missing or malformed: 'moved'\)"):
        DiffResult.read(path)


def _cell_summary(cider: float, gates: dict | None = None) -> CellSummary:
    return CellSummary(
        params=10, recurrent_params=5, weight_sets=1, epoch_seconds=1.5, validation_seconds=0.5,
        epochs=1, val=[{"epoch": 1, "val/loss": 2.0}], best_epoch=1,
        test={"bleu4": 0.25, "cider": cider}, mention_precision_by_position=[0.5, None],
        mention_coverage_by_position=[1.0, 0.5], mentions_by_position=[4, 2],
        grad_norm_per_step={"start": [0.1, 1.0], "end": [0.2, 1.0]},
        grad_first_over_last={"start": 0.1, "end": 0.2}, grad_to_initial_state=[0.5, 0.25],
        clip_fraction=None, train_grad_norm=[3.0, 2.0], gates=gates)


COMPARE = CompareResult(
    cells={"lstm": CellFigures(_cell_summary(0.75, {"image_id": 1, "words": ["a"], "mean": {}}),
                               _cell_summary(0.125), [0, 1],
                               [SeedRun(0, _cell_summary(0.625)), SeedRun(1, _cell_summary(0.875))])},
    settings=CompareSettings(
        cells=["lstm"], dataset="shapes", max_epochs=1, seed=0, seeds=[0, 1], max_objects=3,
        train_images=8, train_captions=40, val_images=4, test_images=4, batch_size=4,
        embed_dim=8, hidden_dim=8, num_layers=1, dropout=0.0, lr=0.001, grad_clip=5.0,
        monitor="val/cider", beam_size=2, precision="fp32", limit_train_batches=1.0),
    encoder=EncoderUsed("config", None, "vgg11_bn", 64, True, 1000),
    grad_flow=GradFlow("last word", "word t", "val", 4, 2),
    positions=PositionsScored("test", "shapes", [4, 2]),
    differences=[Difference("test CIDEr-D", "lstm", "rnn", 0.75, 0.5, True, 1 / 3)],
    seconds=Timing(1.0, 9.0))


def test_a_comparison_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "compare.json"
    path.write_text(json.dumps(COMPARE.to_json()))
    data = json.loads(path.read_text())
    assert data["schema_version"] == SCHEMA_VERSION
    assert "gates" not in data["cells"]["lstm"]["spread"]  # one caption's gates: not averaged
    assert data["differences"][0]["real"] is False  # 1 in 3 is no rare chance
    assert CompareResult.read(path) == COMPARE


def test_a_comparison_of_another_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "compare.json"
    path.write_text(json.dumps({**COMPARE.to_json(), "schema_version": 2}))
    with pytest.raises(CaptionerError, match=r"compare.json: compare.json of schema version 2; "
                                             r"this captioner reads version 1: run `captioner "
                                             r"compare` again"):
        CompareResult.read(path)


MAPS = WordMaps("x.png", "a red", ["a", "red"], [224, 224], [2, 2], [-0.5, -1.25],
                [[56.0, 56.0], None], [[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]],
                ["01-a.png", "02-red.png", "strip.png"])
IMPORT = ImportReport(
    source="caps.tsv", format="tsv", encoding="utf-8", out="out", images_listed=3,
    images_found=3, images_missing=0, images_unreadable=0, images_verified=False, images_kept=3,
    captions_read=4, captions_kept=3, captions_dropped={"empty": 1},
    captions_per_image={"min": 1, "median": 1, "max": 2},
    words_per_caption={"min": 2, "median": 3, "max": 4},
    vocabulary={"min_count": 5, "size": 4, "words": 0, "distinct_words": 6, "token_coverage": 0.0},
    splits={"train": 3}, split_origin="default",
    problems=[{"file": "caps.tsv", "line": 2, "reason": "empty", "message": "no caption"}],
    problems_total=1)


@pytest.mark.parametrize(("record", "name", "again"), [
    (MAPS, "maps.json", "explain again"), (IMPORT, "import_report.json", "import again")])
def test_maps_and_import_report_round_trip_and_refuse_another_version(
        record: WordMaps | ImportReport, name: str, again: str, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_text(json.dumps(record.to_json()))
    assert json.loads(path.read_text())["schema_version"] == 1
    assert type(record).read(path) == record
    old = {k: v for k, v in record.to_json().items() if k != "schema_version"}
    path.write_text(json.dumps(old))  # written before versions: read as version 1
    assert type(record).read(path) == record
    path.write_text(json.dumps({**record.to_json(), "schema_version": 7}))
    with pytest.raises(CaptionerError, match=rf"{name}: {name} of schema version 7; this "
                                             rf"captioner reads version 1: {again}"):
        type(record).read(path)


def test_a_checkpoints_own_record_round_trips() -> None:
    encoder = {"file": "encoder.pth", "sha256": "ab" * 32, "bytes": 10, "source": "/x/encoder.pth"}
    for meta in (CheckpointMeta({"name": "x"}, ["<pad>", "a"], "0.4.0"),
                 CheckpointMeta({"name": "x"}, ["<pad>"], "0.4.0", encoder=encoder, self_critical=True)):
        entries = meta.to_json()
        assert entries["hyper_parameters"]["schema_version"] == CHECKPOINT_SCHEMA
        assert CheckpointMeta.from_json({**entries, "state_dict": {}}, "x.ckpt") == meta


@pytest.mark.slow
def test_a_trained_checkpoint_carries_its_record_and_older_ones_load(best: Path, tmp_path: Path) -> None:
    checkpoint = torch.load(best, map_location="cpu", weights_only=True, mmap=True)
    meta = CheckpointMeta.from_json(checkpoint, best)
    assert checkpoint["hyper_parameters"]["schema_version"] == CHECKPOINT_SCHEMA
    assert meta.vocab[:2] == ["<pad>", "<start>"] and meta.config["decoder"]["hidden_dim"] == 32
    assert not meta.self_critical and meta.encoder["file"] == "encoder.pth"  # a frozen run's
    # The record's own entries, without the weights and the encoder they name:
    entries = {"hyper_parameters": dict(checkpoint["hyper_parameters"]), "state_dict": {}}
    meta = replace(meta, encoder=None)
    # Written before the version existed: read as version 1.
    older = tmp_path / "older.ckpt"
    del entries["hyper_parameters"]["schema_version"]
    torch.save(entries, older)
    assert CheckpointMeta.from_json(load_checkpoint(older), older) == meta
    # Another version: one line naming the file.
    newer = tmp_path / "newer.ckpt"
    entries["hyper_parameters"]["schema_version"] = CHECKPOINT_SCHEMA + 1
    torch.save(entries, newer)
    with pytest.raises(CaptionerError) as caught:
        load_checkpoint(newer)
    assert str(caught.value).startswith(f"{newer}: checkpoint of schema version {CHECKPOINT_SCHEMA + 1}")
    assert "\n" not in str(caught.value)


def test_a_pretraining_checkpoints_record_round_trips_and_refuses_others(tmp_path: Path) -> None:
    meta = PretrainMeta({"name": "x"}, ["red circle", "blue square"], "0.4.0")
    checkpoint = {"hyper_parameters": meta.to_json()}
    assert checkpoint["hyper_parameters"]["schema_version"] == PRETRAIN_SCHEMA
    assert PretrainMeta.from_json(checkpoint, "p.ckpt") == meta
    del checkpoint["hyper_parameters"]["schema_version"]  # written before the version existed
    assert PretrainMeta.from_json(checkpoint, "p.ckpt") == meta
    checkpoint["hyper_parameters"]["schema_version"] = PRETRAIN_SCHEMA + 1
    newer = f"p.ckpt: pretraining checkpoint of schema version {PRETRAIN_SCHEMA + 1}"
    with pytest.raises(CaptionerError, match=newer):
        PretrainMeta.from_json(checkpoint, "p.ckpt")
    captioners = CheckpointMeta({"name": "x"}, ["<pad>"]).to_json()  # a captioner's, not a classifier's
    with pytest.raises(CaptionerError, match=r"^c.ckpt: not a pretraining checkpoint \(no config and"):
        PretrainMeta.from_json(captioners, "c.ckpt")
