"""The CLI as users run it: train on the tiny set, reload in a fresh process, caption, evaluate."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers.cli import run_cli, run_cli_process
from PIL import Image

from captioner.model.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "scene.png"
    canvas = np.zeros((64, 64, 3), np.uint8)
    canvas[20:40, 20:40] = (220, 40, 40)
    Image.fromarray(canvas).save(path)
    return path


def test_train_writes_run_folder_checkpoint_and_report(trained_run: Path) -> None:
    run = trained_run / "runs" / "shapes"
    assert (trained_run / "runs" / "LATEST").read_text().strip() == "shapes"
    assert (run / "config.yaml").is_file() and (run / "logs" / "metrics.csv").is_file()
    checkpoint = load_checkpoint(run / "checkpoints" / "best.ckpt")  # weights_only=True
    hparams = checkpoint["hyper_parameters"]
    assert hparams["vocab"][:4] == ["<pad>", "<start>", "<end>", "<unk>"]
    assert hparams["config"]["decoder"]["hidden_dim"] == 32 and hparams["captioner_version"]
    assert hparams["config"]["encoder"]["weights"] == "pretrain"  # the classic recipe, by default
    metrics = json.loads((run / "eval-test" / "metrics.json").read_text())
    assert set(metrics["metrics"]) >= {"bleu1", "bleu2", "bleu3", "bleu4", "cider"}
    assert (run / "eval-test" / "index.html").is_file()


def test_caption_in_a_fresh_process_uses_the_latest_run(trained_run: Path, image: Path) -> None:
    result = run_cli_process("caption", str(image), cwd=trained_run)
    assert result.returncode == 0, result.stderr
    assert "best.ckpt" in result.stderr  # says which checkpoint it used
    assert result.stdout.strip() and "\n" not in result.stdout.strip()


def test_caption_folder_jsonl_with_a_broken_file(trained_run: Path, image: Path, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.open(image).save(folder / "b.jpg")
    Image.open(image).save(folder / "a.png")
    (folder / "c.jpg").write_bytes(b"not an image at all")
    result = run_cli("caption", str(folder), str(tmp_path / "missing.png"), "--format", "jsonl",
                     cwd=trained_run)
    assert result.returncode == 3  # some inputs failed; the others were still captioned
    lines = {Path(x["image"]).name: x for x in map(json.loads, result.stdout.splitlines())}
    assert sorted(lines) == ["a.png", "b.jpg", "c.jpg", "missing.png"]
    assert "caption" in lines["a.png"] and "caption" in lines["b.jpg"]
    assert "error" in lines["c.jpg"] and "error" in lines["missing.png"]
    # A missing path is reported before the model loads; every failure shows on the terminal too.
    assert result.stderr.splitlines()[1].endswith("missing.png: no such file")  # after "using ..."
    assert "c.jpg: not an image Pillow can read" in result.stderr
    # A missing path is an input that gave no images, not an image that failed.
    assert "1 of 3 images could not be captioned; 1 input gave no images" in result.stderr
    assert "Traceback" not in result.stderr


def test_evaluate_writes_metrics_and_predictions(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = run_cli("evaluate", "--out", str(out), "--beam-size", "2", "--limit", "4",
                     cwd=trained_run)
    assert result.returncode == 0, result.stderr
    assert "BLEU-4" in result.stdout and "CIDEr-D on 0-10" in result.stdout
    predictions = json.loads((out / "predictions.json").read_text())
    assert len(predictions) == 4 and set(predictions[0]) == {"image_id", "caption"}
    assert json.loads((out / "metrics.json").read_text())["run"]["beam_size"] == 2
    # The gallery shows where the model looked for its chosen words (Grad-CAM overlays).
    assert list((out / "maps").glob("*.png")) and "where it looked" in (out / "index.html").read_text()


def test_resume_continues_where_it_stopped(trained_run: Path, tmp_path: Path) -> None:
    # On a copy: the shared run's best.ckpt must stay the one its eval-test report scored.
    # Checkpoints are hard-linked (resuming replaces them by rename, never writes into them).
    work = tmp_path / "work"
    shutil.copytree(trained_run / "runs", work / "runs", copy_function=_link_checkpoints)
    last = work / "runs" / "shapes" / "checkpoints" / "last.ckpt"
    result = run_cli("train", "--resume", str(last), "trainer.max_epochs=2", "--no-eval", cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = load_checkpoint(last)
    assert checkpoint["global_step"] == 4  # 2 more steps after the first 2, not 4 anew
    assert checkpoint["lr_schedulers"][0]["last_epoch"] == 4  # the schedule continued too


def _link_checkpoints(source: str, target: str) -> None:
    if source.endswith(".ckpt"):
        os.link(source, target)
    else:
        shutil.copy2(source, target)


@pytest.mark.parametrize(("args", "needle"), [
    (["caption", "nope.jpg", "--checkpoint", "missing.ckpt"], "checkpoint not found: missing.ckpt"),
    (["caption", "x.jpg"], "run `captioner train` first"),
    (["evaluate"], "run `captioner train` first"),
    (["train", "decoder.celll=gru"], "decoder.celll"),
    (["train", "--config", "missing.yaml"], "config file not found"),
])
def test_clear_one_line_errors(tmp_path: Path, args: list[str], needle: str) -> None:
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode != 0
    assert needle in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_image_and_foreign_checkpoint(trained_run: Path, tmp_path: Path) -> None:
    result = run_cli("caption", str(tmp_path / "nope.jpg"), cwd=trained_run)
    assert result.returncode == 1 and "nope.jpg: no such file" in result.stderr
    foreign = tmp_path / "foreign.ckpt"
    import torch

    torch.save({"state_dict": {}}, foreign)
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    result = run_cli("caption", "x.png", "--checkpoint", str(foreign), cwd=tmp_path)
    assert result.returncode == 1 and "not a captioner checkpoint" in result.stderr
    foreign.write_bytes(b"garbage")
    result = run_cli("caption", "x.png", "--checkpoint", str(foreign), cwd=tmp_path)
    assert result.returncode == 1 and "not a readable checkpoint" in result.stderr


def test_data_shapes_writes_anywhere(tmp_path: Path) -> None:
    result = run_cli("data", "shapes", "--out", str(tmp_path / "ds"), "--num-train", "3",
                     "--num-val", "1", "--num-test", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "ds" / "dataset_shapes.json").is_file()

