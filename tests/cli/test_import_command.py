"""`captioner data import` on the command line: exit statuses and messages."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.cli import run_cli
from helpers.images import jpegs


@pytest.mark.slow
def test_cli_exit_statuses_and_messages(tmp_path: Path) -> None:
    jpegs(tmp_path, ["a.jpg", "b.jpg", "c.jpg"])
    (tmp_path / "good.csv").write_text("a.jpg,one dog\nb.jpg,two dogs\nc.jpg,three dogs\n")
    def run(name: str, out: str, *extra: str):
        return run_cli("data", "import", str(tmp_path / name), "--out", str(tmp_path / out), *extra,
                       cwd=tmp_path)

    clean = run("good.csv", "o1")
    assert clean.returncode == 0, clean.stderr
    assert clean.stdout.splitlines()[-1] == f"captioner train data.root={tmp_path / 'o1'} name=o1"
    (tmp_path / "some.csv").write_text("a.jpg,one dog\nmissing.jpg,a dog\n")
    partial = run("some.csv", "o2")
    assert partial.returncode == 3 and "some.csv:2:" in partial.stderr
    (tmp_path / "bad.csv").write_text("nothing.jpg,a dog\nnone.jpg,a cat\n")
    failed = run("bad.csv", "o3")
    assert failed.returncode == 1 and not (tmp_path / "o3").exists()
    assert failed.stderr.strip().splitlines()[-1].startswith("error: ") and "--images" in failed.stderr
    wrong = run("good.csv", "o4", "--split", "0.9,0.2")
    assert wrong.returncode == 2 and "--split" in wrong.stderr
    nowhere = run("good.csv", "o5", "--images", str(tmp_path / "nowhere"))
    assert nowhere.returncode == 1 and nowhere.stderr.startswith("error: --images")
