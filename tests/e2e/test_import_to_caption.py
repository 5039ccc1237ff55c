"""A user's own photos end to end: import -> train -> evaluate -> caption."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.cli import TINY, run_cli
from helpers.images import jpegs
from helpers.importing import CAPTIONS


@pytest.mark.slow
def test_import_train_evaluate_caption(tmp_path: Path, private_cache: Path) -> None:
    names = [f"{i:02d}.jpg" for i in range(16)]
    jpegs(tmp_path / "photos", names)
    (tmp_path / "photos" / "captions.csv").write_text("image,caption\n" + "".join(
        f"{name},{caption}\n" for name in names for caption in CAPTIONS[:2]))
    out = tmp_path / "dataset"
    imported = run_cli("data", "import", "photos/captions.csv", "--out", str(out),
                       "--split", "0.5,0.25,0.25", cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr
    command = imported.stdout.splitlines()[-1].split()
    train = run_cli(*command[1:], *TINY, cwd=tmp_path)
    assert train.returncode == 0, train.stderr[-3000:]
    assert "CIDEr-D" in train.stdout
    evaluate = run_cli("evaluate", "--out", str(tmp_path / "report"), cwd=tmp_path)
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    assert len(json.loads((tmp_path / "report" / "predictions.json").read_text())) == 4
    # fc7 features are cached under a key holding the dataset folder: no other dataset shares them
    keys = [json.loads(p.read_text()) for p in (private_cache / "features").glob("*/meta.json")]
    assert any(k["dataset"] == str(out) and k["split"] == "test" for k in keys)
    caption = run_cli("caption", "photos/00.jpg", cwd=tmp_path)
    assert caption.returncode == 0 and caption.stdout.strip(), caption.stderr[-3000:]
