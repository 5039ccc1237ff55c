"""`captioner diff` on two reports of the tiny hostile set: numbers, pages, refusals."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from helpers.cli import run_cli
from helpers.reports import SCRIPT_CAPTION, FakeSet, make_fake_set

from captioner.errors import CaptionerError
from captioner.evaluation.diff import diff, diff_paths, load_evaluation
from captioner.evaluation.mentions import load_object_index
from captioner.evaluation.report import write_report

# B's captions where they differ from A's (report_data's): three images fixed, one broken.
B_CAPTIONS = {1: "a blue square", 3: "a red circle and a green square", 4: "a green triangle",
              5: "an orange square", 6: "a yellow circle"}
METRICS = ["bleu1", "bleu2", "bleu3", "bleu4", "cider", "rouge_l", "chair_i", "chair_s", "object_recall"]


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> FakeSet:
    return make_fake_set(tmp_path_factory.mktemp("data"))


def _evaluate(fake: FakeSet, out: Path, captions: dict[int, str], split: str = "test") -> Path:
    results = [replace(r, prediction=captions.get(r.image_id, r.prediction)) for r in fake.results]
    write_report(out, results, objects=load_object_index([fake.instances]), meteor=False,
                 extra={"split": split})
    return out


@pytest.fixture(scope="module")
def folders(fake: FakeSet, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("evals")
    return _evaluate(fake, root / "a", {}), _evaluate(fake, root / "b", B_CAPTIONS)


@pytest.fixture(scope="module")
def result(folders: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("diff") / "a-vs-b"
    return out, diff_paths(*folders, out_dir=out).to_json()


def test_metrics_are_each_reports_with_paired_intervals(folders: tuple[Path, Path],
                                                        result: tuple[Path, dict]) -> None:
    out, found = result
    assert json.loads((out / "diff.json").read_text()) == found
    assert list(found["metrics"]) == METRICS and found["images"] == 7
    for side, folder in zip(("a", "b"), folders):
        reported = json.loads((folder / "metrics.json").read_text())
        values = {**reported["metrics"], **reported["summary"]["objects"]}
        for name in METRICS:
            assert found["metrics"][name][side] == pytest.approx(values[name], rel=1e-12), name
    for name, m in found["metrics"].items():
        assert m["delta"] == pytest.approx(m["b"] - m["a"]) and 0 <= m["b_wins"] <= 1, name
        assert m["interval"][0] <= m["interval"][1], name
    assert found["metrics"]["cider"]["delta"] > 0 and found["metrics"]["chair_s"]["delta"] < 0
    assert found["bootstrap"]["paired"] and "one half" in found["bootstrap"]["ties"]


def test_moved_images_and_tag_changes(result: tuple[Path, dict]) -> None:
    _, found = result
    better = {p["image_id"]: p for p in found["moved"]["b_better"]}
    assert set(better) == {3, 4, 5, 6}
    assert [p["image_id"] for p in found["moved"]["b_worse"]] == [1]
    deltas = [p["cider_delta"] for p in found["moved"]["b_better"]]
    assert deltas == sorted(deltas, reverse=True)
    assert better[4]["a"]["prediction"] == "a green green triangle triangle"
    assert better[4]["b"]["prediction"] == "a green triangle" and better[4]["a"]["tags"] == ["repetition"]
    tags = found["tags"]
    assert tags["repetition"] == {"a": 1, "b": 0, "appeared": [], "disappeared": [4]}
    assert tags["generic"]["disappeared"] == [5, 6, 7]
    assert tags["hallucination"]["appeared"] == [1] and tags["hallucination"]["disappeared"] == [5, 6]


def test_page_is_offline_escaped_and_side_by_side(result: tuple[Path, dict]) -> None:
    out, _ = result
    html = (out / "index.html").read_text()
    assert "http://" not in html and "https://" not in html and "<script" not in html
    assert SCRIPT_CAPTION not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    for text in ("a green green triangle triangle", "repeated: green, triangle", "B − A",
                 "95% interval of B − A", "CHAIR_i", "appeared in B", "B better in"):
        assert text in html, text
    links = [link.split('"')[0] for link in html.split('src="')[1:] + html.split('href="')[1:]]
    for link in links:
        if not link.startswith("#"):
            assert not urlparse(link).scheme and (out / unquote(link)).is_file(), link
    assert len([link for link in links if link.startswith("thumbs/")]) == 5


def test_identical_evaluations_differ_by_nothing(folders: tuple[Path, Path]) -> None:
    a = load_evaluation(folders[0])
    found = diff(a, a).to_json()
    for name, m in found["metrics"].items():
        assert m["delta"] == 0 and m["interval"] == [0, 0] and m["b_wins"] == 0.5, name
    assert found["moved"] == {"b_better": [], "b_worse": []}
    assert not any(t["appeared"] or t["disappeared"] for t in found["tags"].values())


@pytest.mark.slow
def test_refuses_other_images_with_one_line(fake: FakeSet, folders: tuple[Path, Path],
                                            tmp_path: Path) -> None:
    val = tmp_path / "val"
    write_report(val, fake.results[:5], meteor=False, extra={"split": "val"})
    cli = run_cli("diff", str(folders[0]), str(val), cwd=tmp_path, timeout=120)
    assert cli.returncode == 1 and cli.stdout == ""
    assert cli.stderr.startswith("error: cannot diff") and cli.stderr.count("\n") == 1
    assert "not scored on the same images" in cli.stderr and "split val, 5 images" in cli.stderr


def test_refuses_other_references(fake: FakeSet, folders: tuple[Path, Path], tmp_path: Path) -> None:
    results = [replace(r, references=["a cat"]) if r.image_id == 2 else r for r in fake.results]
    other = tmp_path / "other"
    write_report(other, results, objects=load_object_index([fake.instances]), meteor=False)
    with pytest.raises(CaptionerError, match="1 image.* other references.* image 2"):
        diff_paths(folders[0], other)


def test_never_writes_over_a_report(folders: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = folders
    page = (a / "index.html").read_text()
    with pytest.raises(CaptionerError, match="index.html is there already"):
        diff_paths(a, b, out_dir=a)
    assert (a / "index.html").read_text() == page and not (a / "diff.json").exists()
    out = tmp_path / "d"
    diff_paths(a, b, out_dir=out)
    diff_paths(b, a, out_dir=out)  # an earlier diff's folder is fine
    assert json.loads((out / "diff.json").read_text())["a"]["folder"] == str(b.resolve())


def test_a_users_diff_json_proves_nothing(folders: tuple[Path, Path], tmp_path: Path) -> None:
    """Issue 22 item 2: a folder holding files named diff.json and index.html is the user's."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "diff.json").write_text("{}")
    (mine / "index.html").write_text("the user's page")
    with pytest.raises(CaptionerError, match="is there already and not from an earlier diff"):
        diff_paths(*folders, out_dir=mine)
    assert (mine / "index.html").read_text() == "the user's page"


def test_bad_inputs_are_one_line_errors(folders: tuple[Path, Path], tmp_path: Path) -> None:
    checkpoint = tmp_path / "best.ckpt"
    checkpoint.write_bytes(b"")
    with pytest.raises(CaptionerError, match="is a checkpoint: give --out"):
        diff_paths(folders[0], checkpoint)
    with pytest.raises(CaptionerError, match="neither an evaluation folder nor a checkpoint"):
        diff_paths(folders[0], tmp_path / "missing")
    with pytest.raises(CaptionerError, match="not an evaluation folder"):
        diff_paths(folders[0], tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(folders[1], broken)
    lines = (broken / "per_image.jsonl").read_text().splitlines()
    (broken / "per_image.jsonl").write_text("\n".join([*lines[:2], "{not json", *lines[3:]]))
    with pytest.raises(CaptionerError, match=r"per_image.jsonl:3: not valid JSON"):
        diff_paths(folders[0], broken)
    (broken / "per_image.jsonl").write_text("\n".join([*lines, lines[0]]))
    with pytest.raises(CaptionerError, match="image 1 appears twice"):
        diff_paths(folders[0], broken)
    with pytest.raises(CaptionerError, match="at least 1000"):
        diff_paths(*folders, resamples=100)


def test_meteor_is_compared_but_not_resampled(folders: tuple[Path, Path], tmp_path: Path) -> None:
    copies = []
    for folder, meteor in zip(folders, (0.20, 0.25)):
        copy = tmp_path / folder.name
        shutil.copytree(folder, copy)
        metrics = json.loads((copy / "metrics.json").read_text())
        metrics["metrics"]["meteor"] = meteor
        (copy / "metrics.json").write_text(json.dumps(metrics))
        copies.append(copy)
    found = diff_paths(*copies).to_json()
    assert list(found["metrics"]) == [*METRICS[:6], "meteor", *METRICS[6:]]
    assert found["metrics"]["meteor"] == {"a": 0.20, "b": 0.25, "delta": pytest.approx(0.05),
                                          "interval": None, "b_wins": None}
    assert any("METEOR" in note and "not resampled" in note for note in found["notes"])


@pytest.mark.slow
def test_a_folder_against_a_checkpoint(trained_run: Path, tmp_path: Path) -> None:
    """The checkpoint is evaluated on the folder's split; the same model gives no difference."""
    run = trained_run / "runs" / "shapes"
    cli = run_cli("diff", str(run / "eval-test"), str(run / "checkpoints" / "best.ckpt"),
                  "--out", str(tmp_path / "d"), cwd=trained_run)
    assert cli.returncode == 0, cli.stderr[-2000:]
    found = json.loads((tmp_path / "d" / "diff.json").read_text())
    assert found["b"]["run"]["split"] == "test" and not (tmp_path / "d" / "a").exists()
    for name, m in found["metrics"].items():  # CHAIR_i is undefined when nothing is mentioned
        undefined = (m["a"], m["b"], m["delta"]) == (None, None, None)
        assert undefined or (m["delta"], m["b_wins"]) == (0, 0.5), name
    assert "cider" in cli.stdout and "report:" in cli.stdout


def test_a_hand_edited_tag_stays_data() -> None:
    from captioner.pages.html import tag_badges

    record = {"tags": ['x" onmouseover="alert(1)', "missed object"], "hallucinated": [],
              "missed": ["<b>cat</b>"], "repeated": [], "same_caption_images": 0}
    html = tag_badges(record)  # what the report's and the diff's cards show for a per_image.jsonl row
    assert 'onmouseover="' not in html and "<b>" not in html
    assert '<span class="tag tag-x-onmouseoveralert1">' in html and 'class="tag tag-missed-object"' in html
