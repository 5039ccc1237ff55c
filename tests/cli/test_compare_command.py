"""`captioner compare` as users run it: a missing encoder checkpoint, and three cells end to end."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from helpers.cli import TINY, run_cli


@pytest.mark.slow
def test_missing_encoder_checkpoint_is_a_one_line_error(tmp_path: Path) -> None:
    result = run_cli("compare", "--encoder-from", "missing.ckpt", "--out", str(tmp_path / "cmp"),
                     cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == "error: checkpoint not found: missing.ckpt"


@pytest.mark.slow
def test_compare_cli_end_to_end(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    # In the trained run's folder: the encoder comes from its latest run by default.
    result = run_cli("compare", "--cells", "rnn", "lstm", "gru", "--max-epochs", "1", "--seed", "3",
                     "--out", str(out), *TINY, cwd=trained_run)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "index.html" in result.stdout
    data = json.loads((out / "compare.json").read_text())
    assert list(data["cells"]) == ["rnn", "lstm", "gru"]
    assert data["encoder"]["checkpoint"].endswith("best.ckpt")
    steps = data["grad_flow"]["steps"]
    for cell, run in data["cells"].items():
        assert {"params", "recurrent_params", "epoch_seconds", "val", "test", "grad_norm_per_step",
                "clip_fraction"} <= set(run)
        assert set(run["test"]) == {"bleu1", "bleu2", "bleu3", "bleu4", "cider"}
        assert len(run["grad_norm_per_step"]["start"]) == len(run["grad_norm_per_step"]["end"]) == steps
        assert run["val"] and run["best_epoch"] == 1 and 0 <= run["clip_fraction"] <= 1
        assert len(run["train_grad_norm"]) == 2  # limit_train_batches=2
        assert (run["gates"] is None) == (cell == "rnn")
        assert (out / cell / "logs" / "metrics.csv").is_file()
    lstm, gru, rnn = (data["cells"][c]["recurrent_params"] for c in ("lstm", "gru", "rnn"))
    assert lstm == 4 * rnn and gru == 3 * rnn
    page = (out / "index.html").read_text()
    assert "best.ckpt" in page  # says which encoder
    images = page.count('src="data:image/png;base64,')
    assert images >= 6  # 3 plots, 2 gate heatmaps, the test image
    first = page.split('src="data:image/png;base64,', 1)[1].split('"', 1)[0]
    assert base64.b64decode(first).startswith(b"\x89PNG")
    assert "src=\"http" not in page and "src=\"file" not in page
