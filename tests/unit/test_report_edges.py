"""The report and the --explain strip as a reader sees them (issue 24 item 11): an empty map is
marked, epochs count from 1 as the training log does, the worst and best galleries never show the
same image, and the strip's first panel cannot be read as a word of the caption."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from helpers.reports import FakeSet, make_fake_set

from captioner.evaluation.records import WordMap
from captioner.evaluation.report import write_report
from captioner.model.explain import Explanation
from captioner.pages.plots import read_training_log


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> FakeSet:
    return make_fake_set(tmp_path_factory.mktemp("data"))


def _section(html: str, name: str) -> str:
    return html.split(f'id="{name}"', 1)[1].split("</section>", 1)[0]


def test_few_images_never_share_the_worst_and_best_galleries(fake: FakeSet, tmp_path: Path) -> None:
    write_report(tmp_path / "out", fake.results, meteor=False, worst=24, best=12)
    html = (tmp_path / "out" / "index.html").read_text()
    worst, best = (set(re.findall(r"thumbs/(\d+)\.", _section(html, s))) for s in ("worst", "best"))
    assert worst and best and not worst & best
    assert len(worst | best) == len(fake.results)


def test_an_empty_word_map_is_marked_none_on_the_page(fake: FakeSet, tmp_path: Path) -> None:
    image_id = fake.results[0].image_id

    def maps(out_dir: Path, worst: list, best: list) -> dict:
        (out_dir / "maps").mkdir(exist_ok=True)
        (out_dir / "maps" / "m.png").write_bytes(b"")
        return {image_id: [WordMap("circle", "maps/m.png", empty=True)]}

    write_report(tmp_path / "out", fake.results[:2], meteor=False, gallery_maps=maps)
    assert "<figcaption>circle (none)</figcaption>" in (tmp_path / "out" / "index.html").read_text()


def test_validation_epochs_count_from_one(fake: FakeSet) -> None:
    curves = read_training_log(fake.training_log)
    assert [x for x, _ in curves["cider"]["val/cider"]] == [1, 2, 3]  # the log's "epoch 1/3" ...


def test_the_strip_first_panel_is_no_word_of_the_caption() -> None:
    from captioner.model.explain_files import strip_labels

    words = ("an", "image", "with", "a", "circle")
    maps = np.zeros((len(words), 2, 2), np.float32)
    maps[1] = 1.0
    explanation = Explanation(words, maps, np.zeros(len(words), np.float32),
                              np.zeros((8, 8, 3), np.uint8))
    labels = strip_labels(explanation)
    assert labels[1:] == ["an (none)", "image", "with (none)", "a (none)", "circle (none)"]
    assert labels[0] not in words and labels[0].startswith("[")
