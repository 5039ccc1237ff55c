"""The evaluation report on a tiny hostile set: files, escaping, relative links, failure tags."""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from helpers.reports import GENERIC, IMG_FILE_NAME, SCRIPT_CAPTION, FakeSet, make_fake_set
from PIL import Image
from pycocotools.coco import COCO

from captioner.errors import CaptionerError
from captioner.evaluation.mentions import load_object_index
from captioner.evaluation.records import Prediction, read_predictions
from captioner.evaluation.report import ImageResult, write_report
from captioner.pages.plots import read_training_log


class _Page(HTMLParser):
    """Every element's tag and attributes, and the text of script elements."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts.append(data)

    def links(self) -> list[str]:
        return [a[k] for _, a in self.elements for k in ("src", "href")
                if a.get(k) and not a[k].startswith("#")]


def _parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> FakeSet:
    return make_fake_set(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def report(fake: FakeSet, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("report") / "out"
    metrics = write_report(out, fake.results, train_captions=fake.train_captions,
                           objects=load_object_index([fake.instances]),
                           metrics_csv=fake.training_log, worst=4, best=3, meteor=False,
                           extra={"checkpoint": Path("<b>best</b>.ckpt"), "split": "test"})
    return out, metrics.to_json()


def test_writes_every_file(report: tuple[Path, dict]) -> None:
    out, metrics = report
    for name in ("metrics.json", "predictions.json", "per_image.jsonl", "index.html",
                 "scores.png", "learning_curves.png"):
        assert (out / name).is_file(), name
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert not list(out.glob(".*.tmp")), "atomic writes left temporary files behind"


def test_a_folder_with_someone_elses_page_is_refused(report: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = report
    results = [ImageResult(r["image_id"], Path(r["file"]), r["prediction"], r["references"])
               for r in map(json.loads, (out / "per_image.jsonl").read_text().splitlines())]
    again = shutil.copytree(out, tmp_path / "again")
    write_report(again, results, bootstrap=0, meteor=False)  # an earlier report's folder: rewritten
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "index.html").write_text("a user's page")
    with pytest.raises(CaptionerError, match="index.html is there already and not from an earlier eval"):
        write_report(tmp_path / "site", results, bootstrap=0, meteor=False)
    assert (tmp_path / "site" / "index.html").read_text() == "a user's page"


def _results_of(out: Path) -> list[ImageResult]:
    return [ImageResult(r["image_id"], Path(r["file"]), r["prediction"], r["references"])
            for r in map(json.loads, (out / "per_image.jsonl").read_text().splitlines())]


def test_a_file_named_like_a_report_proves_nothing(report: tuple[Path, dict], tmp_path: Path) -> None:
    """Issue 22 item 2: a folder holding a user's metrics.json is not an earlier report."""
    out, _ = report
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("metrics.json", "index.html", "predictions.json"):
        (mine / name).write_text(f"the user's {name}")
    with pytest.raises(CaptionerError, match="is there already and not from an earlier evaluation"):
        write_report(mine, _results_of(out), bootstrap=0, meteor=False)
    for name in ("metrics.json", "index.html", "predictions.json"):
        assert (mine / name).read_text() == f"the user's {name}"
    # An earlier report whose page the user has since edited: the edit is kept, not replaced.
    edited = shutil.copytree(out, tmp_path / "edited")
    (edited / "index.html").write_text("my notes on this report")
    with pytest.raises(CaptionerError, match="index.html is there already"):
        write_report(edited, _results_of(out), bootstrap=0, meteor=False)
    assert (edited / "index.html").read_text() == "my notes on this report"
    # A file a user added to the report's thumbnails folder is not replaced either.
    added = shutil.copytree(out, tmp_path / "added")
    next((added / "thumbs").iterdir()).write_bytes(b"my own picture")
    with pytest.raises(CaptionerError, match="thumbs/.* is there already"):
        write_report(added, _results_of(out), bootstrap=0, meteor=False)


def test_a_killed_report_is_rewritten_and_its_leftovers_go(report: tuple[Path, dict],
                                                           tmp_path: Path) -> None:
    """Issue 22 item 19: the temporary files a killed write left are removed by the rewrite."""
    out, _ = report
    again = shutil.copytree(out, tmp_path / "again")
    (again / ".learning_curves.png.k1ll3d.tmp").write_bytes(b"")
    (again / ".mine.tmp").write_bytes(b"a user's hidden file")
    write_report(again, _results_of(out), bootstrap=0, meteor=False)
    assert not (again / ".learning_curves.png.k1ll3d.tmp").exists()
    assert (again / ".mine.tmp").read_bytes() == b"a user's hidden file"


def test_predictions_are_in_coco_results_format(report: tuple[Path, dict],
                                                fake: FakeSet) -> None:
    out, _ = report
    predictions = json.loads((out / "predictions.json").read_text())
    assert predictions == [{"image_id": r.image_id, "caption": r.prediction}
                           for r in fake.results]
    assert read_predictions(out / "predictions.json") == [Prediction(r.image_id, r.prediction)
                                                          for r in fake.results]
    # pycocotools reads it as COCO results, against a ground truth of the same images.
    truth = COCO()
    truth.dataset = {"images": [{"id": r.image_id} for r in fake.results], "annotations": [
        {"id": n, "image_id": r.image_id, "caption": ref} for n, (r, ref) in enumerate(
            (r, ref) for r in fake.results for ref in r.references)]}
    truth.createIndex()
    results = truth.loadRes(str(out / "predictions.json"))
    assert sorted(results.getImgIds()) == sorted(r.image_id for r in fake.results)


def test_predictions_that_are_not_coco_results_are_one_line(tmp_path: Path) -> None:
    for text, needle in (("{}", "not COCO results"), ('[{"image_id": "1", "caption": "a"}]', "[0]"),
                         ('[{"caption": "a"}]', "missing or malformed")):
        (tmp_path / "predictions.json").write_text(text)
        with pytest.raises(CaptionerError, match=needle) as caught:
            read_predictions(tmp_path / "predictions.json")
        assert str(tmp_path) in str(caught.value) and "\n" not in str(caught.value)


def test_per_image_records(report: tuple[Path, dict], fake: FakeSet) -> None:
    out, _ = report
    records = [json.loads(line) for line in (out / "per_image.jsonl").read_text().splitlines()]
    assert [r["image_id"] for r in records] == [r.image_id for r in fake.results]
    by_id = {r["image_id"]: r for r in records}
    assert set(by_id[1]["scores"]) == {"bleu4_smoothed", "cider"}
    assert by_id[1]["tags"] == [] and by_id[1]["references"] == fake.results[0].references
    assert by_id[3]["file"].endswith(IMG_FILE_NAME)
    assert by_id[3]["missed"] == ["green square"]
    assert "repetition" in by_id[4]["tags"] and by_id[4]["repeated"] == ["green", "triangle"]
    for image_id in (5, 6):
        assert {"generic", "hallucination", "missed object"} <= set(by_id[image_id]["tags"])
        assert by_id[image_id]["hallucinated"] == ["purple triangle"]
    # Image 7's references say the generic caption too: right, but still given to 3 images.
    assert by_id[7]["tags"] == ["generic"] and by_id[7]["same_caption_images"] == 3


def test_metrics_json_states_scale_notes_and_summary(report: tuple[Path, dict]) -> None:
    out, metrics = report
    assert json.loads((out / "metrics.json").read_text()) == metrics  # what write_report returned
    assert set(metrics["metrics"]) == {"bleu1", "bleu2", "bleu3", "bleu4", "cider", "rouge_l"}
    assert "multiply by 100" in metrics["scale"]
    assert "CIDEr-D" in metrics["definitions"]["cider"]
    assert "METEOR skipped: switched off" in metrics["notes"]
    assert metrics["run"] == {"checkpoint": "<b>best</b>.ckpt", "split": "test"}
    summary = metrics["summary"]
    assert summary["images"] == 7
    assert summary["distinct_captions"] == pytest.approx(5 / 7)
    assert summary["novel_captions"] == pytest.approx(5 / 7)  # "a red circle", "a blue square"
    assert summary["tags"]["generic"] == 3 and summary["tags"]["repetition"] == 1
    objects = summary["objects"]
    assert objects["kind"] == "shapes" and objects["images_annotated"] == 7
    # Mentions: 1 per image (3 mentions of "purple triangle", 2 of them wrong) -> 2/7.
    assert objects["chair_i"] == pytest.approx(2 / 7)
    assert objects["chair_s"] == pytest.approx(2 / 7)


def test_page_escapes_dataset_and_model_strings(report: tuple[Path, dict]) -> None:
    out, _ = report
    html = (out / "index.html").read_text()
    page = _parse(html)
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; a red circle" in html
    assert "onerror" not in [k for _, attrs in page.elements for k in attrs]
    assert not [a for tag, a in page.elements if tag == "img" and a.get("src") == "x"]
    assert "&lt;b&gt;best&lt;/b&gt;.ckpt" in html
    # The only script is the page's own image-loading probe.
    assert len(page.scripts) == 1 and "alert" not in page.scripts[0]
    assert SCRIPT_CAPTION not in html


def test_page_is_offline_and_its_links_are_relative(report: tuple[Path, dict],
                                                    tmp_path: Path) -> None:
    out, _ = report
    html = (out / "index.html").read_text()
    assert "http://" not in html and "https://" not in html
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    links = _parse(html).links()
    images = [src for tag, a in _parse(html).elements if tag == "img" for src in [a["src"]]]
    assert len(images) == 2 + 7  # both plots, thumbnails of the worst 4 and best 3 (all 7)
    for link in links:
        assert not urlparse(link).scheme and not link.startswith("/"), link
        assert (moved / unquote(link)).is_file(), link


def test_thumbnails_are_small(report: tuple[Path, dict]) -> None:
    out, _ = report
    with Image.open(out / "thumbs" / "2.jpg") as thumb:  # from the 1600 x 1200 JPEG
        assert max(thumb.size) <= 320 and thumb.format == "JPEG"


def test_page_has_the_sections_a_reader_needs(report: tuple[Path, dict]) -> None:
    out, _ = report
    html = (out / "index.html").read_text()
    ids = {a.get("id") for _, a in _parse(html).elements}
    assert {"metrics", "summary", "plots", "worst", "best", "files"} <= ids
    for text in ("BLEU-4", "CIDEr-D", "ROUGE-L", "CHAIR_i", "distinct captions",
                 "novel captions", "hallucinated: purple triangle", "repeated: green, triangle",
                 "4 worst images", "3 best images", GENERIC):
        assert text in html, text


def test_missing_log_and_unreadable_image_are_noted(fake: FakeSet, tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    results = [*fake.results[:2], ImageResult(99, broken, "a dog", ["a cat"])]
    metrics = write_report(tmp_path / "out", results, metrics_csv=tmp_path / "nope.csv",
                           meteor=False).to_json()
    assert any("training log not found" in n for n in metrics["notes"])
    assert any("could not be read" in n and "broken.jpg" in n for n in metrics["notes"])
    assert "image not readable" in (tmp_path / "out" / "index.html").read_text()
    assert "objects" not in metrics["summary"] and metrics["summary"]["novel_captions"] is None


def test_rejects_empty_and_duplicated_results(fake: FakeSet, tmp_path: Path) -> None:
    with pytest.raises(CaptionerError, match="no images"):
        write_report(tmp_path, [], meteor=False)
    with pytest.raises(CaptionerError, match="more than once"):
        write_report(tmp_path, [fake.results[0], fake.results[0]], meteor=False)


def test_training_log_skips_gaps_and_nan(fake: FakeSet) -> None:
    curves = read_training_log(fake.training_log)
    assert curves["loss"]["train/loss"] == [(9, 2.5), (19, 2.1), (39, 1.7), (59, 1.4)]
    assert curves["loss"]["val/loss"] == [(19, 2.3), (39, 1.9), (59, 1.8)]
    # CIDEr-D (0-10) gets an axis of its own; BLEU shares the 0-1 one; counts are not plotted.
    assert curves["cider"]["val/cider"] == [(1, 0.10), (2, 0.20), (3, 0.31)]  # epochs from 1
    assert list(curves["scores"]) == ["val/bleu4"]
    assert "lr-Adam" not in curves["scores"] and "val/images" not in curves["scores"]
