"""`captioner train` on the command line: a run that fails before its first checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.cli import TINY, run_cli


@pytest.mark.slow
def test_a_run_that_fails_before_its_first_checkpoint_leaves_nothing(tmp_path: Path) -> None:
    result = run_cli("train", *TINY, "data.dataset=coco", f"data.root={tmp_path / 'nowhere'}", cwd=tmp_path)
    assert result.returncode == 1 and "data.root: no such folder" in result.stderr
    assert "captioner data coco --root" in result.stderr  # what to do about it
    assert not (tmp_path / "runs" / "shapes").exists()
    assert not (tmp_path / "runs" / "LATEST").exists()
