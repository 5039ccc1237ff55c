"""download_coco against a loopback server holding miniature archives with the real layouts."""

from __future__ import annotations

import dataclasses
import json
import re
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from coco_fixture import Faults, build_coco_archives, serve_directory
from PIL import Image
from pycocotools.coco import COCO

from captioner.data.download import ARCHIVE_NAMES, ARCHIVES, DownloadError, fetch, main

REPO = Path(__file__).resolve().parents[1]
N_TRAIN, N_VAL = 6, 6


@pytest.fixture(scope="module")
def zips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("zips")
    build_coco_archives(directory, n_train=N_TRAIN, n_val=N_VAL)
    return directory


class Served:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str | None]] = []
        self.faults = Faults()
        self.url = ""


@pytest.fixture
def served(zips: Path):
    state = Served()
    with serve_directory(zips, state.requests, state.faults) as url:
        state.url = url
        yield state


def run(root: Path, url: str, *extra: str) -> int:
    return main(["--root", str(root), "--mirror", url, "--timeout", "10", *extra])


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def leftovers(root: Path) -> list[str]:
    """Archives, partial downloads, extraction folders and markers: none may survive a failure."""
    names = sorted(p.name for p in root.iterdir()) if root.exists() else []
    return [n for n in names
            if n.endswith((".zip", ".part")) or n.startswith((".extract-", ".complete"))]


def test_fixture_matches_the_real_formats(zips: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(zips / "annotations_trainval2014.zip") as archive:
        archive.extractall(tmp_path)
    with zipfile.ZipFile(zips / "caption_datasets.zip") as archive:
        karpathy = json.loads(archive.read("dataset_coco.json"))
    captions = COCO(str(tmp_path / "annotations" / "captions_val2014.json"))
    instances = COCO(str(tmp_path / "annotations" / "instances_val2014.json"))
    assert sorted(instances.getCatIds()) == [1, 3, 18]
    val = [im for im in karpathy["images"] if im["filepath"] == "val2014"]
    assert {im["split"] for im in val} == {"val", "test", "restval"}
    for image in val:
        raws = [s["raw"] for s in image["sentences"]]
        assert raws == [a["caption"] for a in captions.imgToAnns[image["cocoid"]]]
        assert image["sentids"] == [s["sentid"] for s in image["sentences"]]


def test_downloads_and_extracts_every_archive(served: Served, tmp_path: Path) -> None:
    assert run(tmp_path, served.url) == 0
    assert sorted(path for path, _ in served.requests) == sorted(f"/{n}" for n in ARCHIVE_NAMES)
    karpathy = json.loads((tmp_path / "dataset_coco.json").read_text())
    assert len(karpathy["images"]) == N_TRAIN + N_VAL
    for image in karpathy["images"]:
        with Image.open(tmp_path / image["filepath"] / image["filename"]) as picture:
            assert picture.format == "JPEG"
    assert (tmp_path / "annotations" / "instances_train2014.json").is_file()
    assert sorted(p.name for p in (tmp_path / ".complete").iterdir()) == sorted(
        f"{n}.done" for n in ARCHIVE_NAMES)
    assert leftovers(tmp_path) == [".complete"]


def test_second_run_fetches_nothing(served: Served, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert run(tmp_path, served.url) == 0
    served.requests.clear()
    capsys.readouterr()
    assert run(tmp_path, served.url) == 0
    assert served.requests == []
    assert capsys.readouterr().out.count("already complete") == len(ARCHIVE_NAMES)


def test_dropped_connection_resumes_with_a_range_request(
        served: Served, zips: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    half = (zips / "val2014.zip").stat().st_size // 2
    served.faults.drop_after = half
    assert run(tmp_path, served.url, "--only", "val2014.zip") == 1
    error = one_error_line(capsys)
    assert "val2014.zip" in error and "rerun to resume" in error
    assert (tmp_path / "val2014.zip.part").stat().st_size == half
    assert not (tmp_path / ".complete").exists()

    served.faults.drop_after = None
    served.requests.clear()
    assert run(tmp_path, served.url, "--only", "val2014.zip") == 0
    assert served.requests == [("/val2014.zip", f"bytes={half}-")]
    with zipfile.ZipFile(zips / "val2014.zip") as archive:
        name = "val2014/COCO_val2014_000000000007.jpg"
        assert (tmp_path / name).read_bytes() == archive.read(name)


def test_server_ignoring_range_restarts_the_download(served: Served, tmp_path: Path) -> None:
    tmp_path.joinpath("val2014.zip.part").write_bytes(b"x" * 100)  # appending to this would corrupt
    served.faults.ignore_range = True
    assert run(tmp_path, served.url, "--only", "val2014.zip") == 0
    assert served.requests == [("/val2014.zip", "bytes=100-")]
    assert len(list((tmp_path / "val2014").iterdir())) == N_VAL


def flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        member = archive.infolist()[1]  # [0] is the train2014/ directory entry
    data[member.header_offset + 30 + len(member.filename) + member.compress_size // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(("fault", "cause"), [
    ("bad bytes", r"CRC|corrupt"),
    ("short body", r"not a zip"),
    ("missing", r"HTTP 404"),
])
def test_a_bad_archive_is_one_line_and_never_complete(
        fault: str, cause: str, zips: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    if fault != "missing":
        (mirror / "train2014.zip").write_bytes((zips / "train2014.zip").read_bytes())
    if fault == "bad bytes":
        flip_middle_byte(mirror / "train2014.zip")
    faults = Faults(truncate_to=1000 if fault == "short body" else None)
    root = tmp_path / "coco"
    with serve_directory(mirror, faults=faults) as url:
        assert run(root, url, "--only", "train2014.zip") == 1
    error = one_error_line(capsys)
    assert error.startswith("error: train2014.zip: ")
    assert re.search(cause, error), error
    assert leftovers(root) == [] and not (root / "train2014").exists()


def test_official_size_is_enforced(served: Served, tmp_path: Path) -> None:
    wrong = dataclasses.replace(ARCHIVES["val2014.zip"], url=f"{served.url}/val2014.zip", size=999)
    with pytest.raises(DownloadError, match=r"^val2014.zip: .*announces \d+ bytes, expected 999"):
        fetch(wrong, tmp_path)
    assert leftovers(tmp_path) == []


def test_dry_run_downloads_nothing(served: Served, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "coco"
    assert run(root, served.url, "--dry-run") == 0
    out = capsys.readouterr().out
    assert served.requests == [] and not root.exists()
    assert f"{served.url}/train2014.zip -> {root / 'train2014.zip'}" in out
    assert "disk space needed" in out and "approximate" in out


def test_connection_refused_is_one_line_from_the_script(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = subprocess.run(
        [sys.executable, str(REPO / "data_scripts" / "download_coco.py"), "--root", str(tmp_path),
         "--mirror", f"http://127.0.0.1:{port}", "--timeout", "5"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: train2014.zip: cannot reach http://127.0.0.1:{port}/train2014.zip: "
        "Connection refused"]
