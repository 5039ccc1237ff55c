"""download_coco against a loopback server holding miniature archives with the real layouts."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import REPO
from helpers.coco import Faults, build_coco_archives, serve_directory
from PIL import Image
from pycocotools.coco import COCO

from captioner.cli import main
from captioner.data import download
from captioner.data.download import ARCHIVE_NAMES, ARCHIVES, LOCK_FILE, DownloadError, fetch
from captioner.util.locks import flock

N_TRAIN, N_VAL = 6, 6


@pytest.fixture(scope="module")
def zips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("zips")
    build_coco_archives(directory, n_train=N_TRAIN, n_val=N_VAL)
    return directory


def pin(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Publish the sizes and SHA-256 sums of the archives in `folder`, as COCO's are pinned."""
    pinned = {}
    for name, archive in ARCHIVES.items():
        path = folder / name
        if path.is_file():
            archive = dataclasses.replace(archive, size=path.stat().st_size,
                                          sha256=hashlib.sha256(path.read_bytes()).hexdigest())
        pinned[name] = archive
    monkeypatch.setattr(download, "ARCHIVES", pinned)


@pytest.fixture(autouse=True)
def pinned(zips: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pin(monkeypatch, zips)


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
    return main(["data", "coco", "--root", str(root), "--mirror", url, "--timeout", "10", *extra])


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
    ("bad bytes", r"SHA-256 differs"),
    ("short body", r"announces 1000 bytes"),
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
    wrong = dataclasses.replace(download.ARCHIVES["val2014.zip"], url=f"{served.url}/val2014.zip",
                                size=999)
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


def test_the_script_is_captioner_data_coco() -> None:
    """Issue 23 item 6: one entry, `captioner data coco`; the script only runs it (no sys.path)."""
    script = (REPO / "data_scripts" / "download_coco.py").read_text()
    assert 'main(["data", "coco", *sys.argv[1:]])' in script and "sys.path" not in script
    assert not hasattr(download, "main") and not hasattr(download, "parse_args")


def test_existing_folders_are_merged_never_replaced(served: Served, tmp_path: Path) -> None:
    mine = tmp_path / "annotations" / "captions_train2017.json"  # COCO 2017 shares annotations/
    mine.parent.mkdir(parents=True)
    mine.write_text('{"mine": true}')
    assert run(tmp_path, served.url, "--only", "annotations_trainval2014.zip") == 0
    assert mine.read_text() == '{"mine": true}'
    assert (tmp_path / "annotations" / "captions_train2014.json").is_file()


def test_a_file_in_the_way_stops_the_extraction_and_stays(
        served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    theirs = tmp_path / "annotations" / "captions_val2014.json"
    theirs.parent.mkdir(parents=True)
    theirs.write_text("an edited copy")
    assert run(tmp_path, served.url, "--only", "annotations_trainval2014.zip") == 1
    error = one_error_line(capsys)
    assert "captions_val2014.json is in the way" in error
    assert theirs.read_text() == "an edited copy"
    assert not (tmp_path / ".complete").exists()


def test_an_interrupted_extraction_resumes_keeping_what_it_wrote(served: Served, zips: Path,
                                                                  tmp_path: Path) -> None:
    with zipfile.ZipFile(zips / "val2014.zip") as archive:  # as if a run died after one file
        first = next(m for m in archive.infolist() if not m.is_dir())
        archive.extract(first, tmp_path)
    assert run(tmp_path, served.url, "--only", "val2014.zip") == 0
    assert len(list((tmp_path / "val2014").iterdir())) == N_VAL


def test_a_hand_copied_archive_that_fails_is_kept_renamed(
        zips: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copied = tmp_path / "val2014.zip"
    copied.write_bytes((zips / "val2014.zip").read_bytes())
    flip_middle_byte(copied)
    with serve_directory(zips) as url:
        assert run(tmp_path, url, "--only", "val2014.zip") == 1
    error = one_error_line(capsys)
    assert "kept as val2014.zip.rejected" in error
    assert (tmp_path / "val2014.zip.rejected").stat().st_size == (zips / "val2014.zip").stat().st_size
    with serve_directory(zips) as url:  # the rerun downloads a fresh copy
        assert run(tmp_path, url, "--only", "val2014.zip") == 0
    assert (tmp_path / "val2014.zip.rejected").exists()


def test_a_hand_copied_archive_that_passes_is_used_and_kept(served: Served, zips: Path,
                                                            tmp_path: Path) -> None:
    (tmp_path / "val2014.zip").write_bytes((zips / "val2014.zip").read_bytes())
    assert run(tmp_path, served.url, "--only", "val2014.zip") == 0
    assert served.requests == [] and (tmp_path / "val2014.zip").is_file()


def test_a_complete_part_answered_416_is_accepted(served: Served, zips: Path, tmp_path: Path) -> None:
    (tmp_path / "val2014.zip.part").write_bytes((zips / "val2014.zip").read_bytes())
    assert run(tmp_path, served.url, "--only", "val2014.zip") == 0
    size = (zips / "val2014.zip").stat().st_size
    assert served.requests == [("/val2014.zip", f"bytes={size}-")]  # one request, no new download
    assert len(list((tmp_path / "val2014").iterdir())) == N_VAL


def test_two_downloaders_cannot_share_a_folder(served: Served, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    with flock(tmp_path / LOCK_FILE, wait=True):
        assert run(tmp_path, served.url) == 1
    assert "another download into" in one_error_line(capsys)
    assert served.requests == []


def _patched_zip(source: Path, target: Path, *, flag: int = 0, method: int | None = None) -> None:
    """A copy of `source` whose members claim encryption (flag bit 0) or another compression."""
    data = bytearray(source.read_bytes())
    with zipfile.ZipFile(source) as archive:
        members = archive.infolist()
        central = archive.start_dir
    offsets = [m.header_offset for m in members]
    position = central
    while data[position:position + 4] == b"PK\x01\x02":  # central directory records
        offsets.append(position + 2)  # their fields sit 2 bytes later than the local headers'
        name_length, extra, comment = (int.from_bytes(data[position + k:position + k + 2], "little")
                                       for k in (28, 30, 32))
        position += 46 + name_length + extra + comment
    for offset in offsets:
        if flag:
            data[offset + 6] |= flag
        if method is not None:
            data[offset + 8:offset + 10] = method.to_bytes(2, "little")
    target.write_bytes(bytes(data))


@pytest.mark.parametrize(("patch", "cause"), [({"flag": 1}, "is encrypted"),
                                              ({"method": 99}, "compression method 99")])
def test_unreadable_members_are_one_line(patch: dict, cause: str, zips: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    _patched_zip(zips / "val2014.zip", mirror / "val2014.zip", **patch)
    pin(monkeypatch, mirror)
    with serve_directory(mirror) as url:
        assert run(tmp_path / "coco", url, "--only", "val2014.zip") == 1
    error = one_error_line(capsys)
    assert error.startswith("error: val2014.zip: ") and cause in error


def test_extraction_checks_free_space_first(served: Served, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    real = download.shutil.disk_usage
    monkeypatch.setattr(download.shutil, "disk_usage",
                        lambda path: real(path)._replace(free=1000))
    assert run(tmp_path, served.url, "--only", "val2014.zip") == 1
    assert "needs" in one_error_line(capsys) and not (tmp_path / "val2014").exists()


def test_a_member_that_leaves_the_folder_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with zipfile.ZipFile(mirror / "val2014.zip", "w") as archive:
        archive.writestr("val2014/ok.jpg", b"fine")
        archive.writestr("val2014/../../evil.txt", b"outside")
    pin(monkeypatch, mirror)
    with serve_directory(mirror) as url:
        assert run(tmp_path / "coco", url, "--only", "val2014.zip") == 1
    assert "leaves" in one_error_line(capsys) and not (tmp_path / "evil.txt").exists()
