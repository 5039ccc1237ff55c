"""The report in a real browser: headless Chromium renders the gallery and loads its images.

The screenshot is kept in $CAPTIONER_ARTIFACTS/report_screenshot.png when that variable is set
(CI uploads it), else in the test's tmp_path.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from helpers.reports import make_fake_set
from PIL import Image, ImageStat

from captioner.evaluation.mentions import load_object_index
from captioner.evaluation.report import write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium) on PATH"
)
# No network, no profile sync or updates: the page must render from local files alone.
_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync",
          "--hide-scrollbars"]


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    fake = make_fake_set(root / "data")
    out = root / "report"
    write_report(out, fake.results, train_captions=fake.train_captions,
                 objects=load_object_index([fake.instances]), metrics_csv=fake.training_log,
                 meteor=False, extra={"split": "test"})
    # Served from elsewhere than where it was written: proves every link is relative.
    moved = root / "moved"
    shutil.move(out, moved)
    shutil.rmtree(root / "data")
    return moved / "index.html"


class _ImageTags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.attrs: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.attrs.append(dict(attrs))


def _chromium(page: Path, profile: Path, *args: str) -> str:
    completed = subprocess.run(
        [CHROMIUM, *_FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    return completed.stdout


@pytest.mark.slow
def test_gallery_images_load(page: Path, tmp_path: Path) -> None:
    dom = _chromium(page, tmp_path / "profile", "--dump-dom")
    body = re.search(r"<body([^>]*)>", dom)
    assert body, dom[:500]
    loaded = re.search(r'data-images-loaded="(\d+)"', body.group(1))
    total = re.search(r'data-images-total="(\d+)"', body.group(1))
    assert loaded and total, "the page's load probe did not run: " + body.group(0)
    # 2 plots + the 7 images once each: the fake set is smaller than both galleries, which no
    # longer show an image twice (the worst takes what the best, at most half, leaves).
    assert int(total.group(1)) == 2 + 7
    assert loaded.group(1) == total.group(1)
    # The hostile caption and file name are text on the page, not markup.
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
    images = _ImageTags()
    images.feed(dom)
    assert len(images.attrs) == int(total.group(1))
    assert not [a for a in images.attrs if "onerror" in a or a.get("src") == "x"]


@pytest.mark.slow  # over a second where bf16 and AVX-512 are missing: out of the fast loop
def test_screenshot(page: Path, tmp_path: Path) -> None:
    folder = Path(os.environ.get("CAPTIONER_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    screenshot = folder / "report_screenshot.png"
    screenshot.unlink(missing_ok=True)
    _chromium(page, tmp_path / "profile", f"--screenshot={screenshot}",
              "--window-size=1280,3000")
    with Image.open(screenshot) as image:
        assert image.size == (1280, 3000)
        # Not a blank page: the thumbnails and plots give the pixels real spread.
        assert max(ImageStat.Stat(image.convert("L")).stddev) > 20
