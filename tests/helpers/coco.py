"""A miniature COCO 2014 + Karpathy split, zipped like the real archives, and a loopback server.

    archives = build_coco_archives(tmp_path / "zips", n_train=6, n_val=6)
    with serve_directory(tmp_path / "zips") as url:
        main(["--root", str(tmp_path / "coco"), "--mirror", url])

Images are learnable on purpose (an end-to-end test trains on them): the background colour and
the object's shape decide the caption, e.g. a tall black box on red -> "a person on a red ...".
"""

from __future__ import annotations

import json
import re
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from PIL import Image, ImageDraw

# Real COCO category records (ids are not contiguous in COCO: dog is 18).
CATEGORIES = [
    {"supercategory": "person", "id": 1, "name": "person"},
    {"supercategory": "vehicle", "id": 3, "name": "car"},
    {"supercategory": "animal", "id": 18, "name": "dog"},
]
# Each category's box as (x0, y0, x1, y1) on a 64x48 image: tall, wide, small and low.
BOXES = {"person": (26, 4, 38, 44), "car": (6, 18, 58, 36), "dog": (20, 28, 40, 44)}
COLOURS = {"red": (200, 30, 30), "green": (30, 160, 60), "blue": (40, 60, 200),
           "yellow": (220, 200, 40)}
TEMPLATES = (
    "A {name} on a {colour} background.",
    "a {colour} picture with a {name} in it",
    "There is a {name} in front of a {colour} wall.",
    "A {name} standing in a {colour} room.",
    "A close up of a {name} against {colour}.",
)
IMAGE_SIZE = (64, 48)
LICENSES = [{"url": "http://creativecommons.org/licenses/by/2.0/", "id": 4,
             "name": "Attribution License"}]


@dataclass(frozen=True)
class _Image:
    coco_id: int
    folder: str  # "train2014" or "val2014"
    split: str  # Karpathy's: train2014 is all "train"; val2014 is cut into val/test/restval
    category: dict[str, Any]
    colour: str

    @property
    def file_name(self) -> str:
        return f"COCO_{self.folder}_{self.coco_id:012d}.jpg"

    @property
    def captions(self) -> list[str]:
        return [t.format(name=self.category["name"], colour=self.colour) for t in TEMPLATES]


def build_coco_archives(directory: Path, n_train: int = 6, n_val: int = 6) -> dict[str, Path]:
    """Write train2014.zip, val2014.zip, annotations_trainval2014.zip and caption_datasets.zip."""
    directory.mkdir(parents=True, exist_ok=True)
    images = _plan_images(n_train, n_val)
    paths = {name: directory / name for name in
             ("train2014.zip", "val2014.zip", "annotations_trainval2014.zip",
              "caption_datasets.zip")}
    for folder in ("train2014", "val2014"):
        _write_zip(paths[f"{folder}.zip"], {
            f"{folder}/{im.file_name}": _jpeg(im) for im in images if im.folder == folder})
    annotations = {}
    for folder in ("train2014", "val2014"):
        subset = [im for im in images if im.folder == folder]
        annotations[f"annotations/captions_{folder}.json"] = _captions_json(subset)
        annotations[f"annotations/instances_{folder}.json"] = _instances_json(subset)
    _write_zip(paths["annotations_trainval2014.zip"],
               {name: json.dumps(obj).encode() for name, obj in annotations.items()})
    _write_zip(paths["caption_datasets.zip"], {
        "dataset_coco.json": json.dumps(_karpathy_json(images)).encode(),
        "dataset_flickr8k.json": json.dumps({"images": [], "dataset": "flickr8k"}).encode(),
        "dataset_flickr30k.json": json.dumps({"images": [], "dataset": "flickr30k"}).encode(),
    })
    return paths


def _plan_images(n_train: int, n_val: int) -> list[_Image]:
    names = list(COLOURS)
    images = []
    for i in range(n_train + n_val):
        folder, j = ("train2014", i) if i < n_train else ("val2014", i - n_train)
        split = "train" if folder == "train2014" else ("val", "test", "restval")[j % 3]
        images.append(_Image(coco_id=i + 1, folder=folder, split=split,
                             category=CATEGORIES[i % 3], colour=names[(i // 3) % len(names)]))
    return images


def _jpeg(image: _Image) -> bytes:
    picture = Image.new("RGB", IMAGE_SIZE, COLOURS[image.colour])
    ImageDraw.Draw(picture).rectangle(BOXES[image.category["name"]], fill=(10, 10, 10))
    buffer = BytesIO()
    picture.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _write_zip(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for folder in sorted({m.split("/")[0] + "/" for m in members if "/" in m}):
            archive.writestr(folder, b"")  # real COCO zips carry directory entries
        for name, data in members.items():
            archive.writestr(name, data)


def _image_record(image: _Image) -> dict[str, Any]:
    return {"license": 4, "file_name": image.file_name,
            "coco_url": f"http://images.cocodataset.org/{image.folder}/{image.file_name}",
            "height": IMAGE_SIZE[1], "width": IMAGE_SIZE[0],
            "date_captured": "2013-11-14 16:28:13", "flickr_url": "", "id": image.coco_id}


def _header(images: list[_Image]) -> dict[str, Any]:
    info = {"description": "Miniature COCO 2014 for tests", "version": "1.0", "year": 2014}
    return {"info": info, "images": [_image_record(im) for im in images], "licenses": LICENSES}


def _caption_id(image: _Image, k: int) -> int:
    # COCO caption ids are unrelated to Karpathy's sentids; keep them apart so no code mixes them.
    return 100_000 + image.coco_id * 10 + k


def _captions_json(images: list[_Image]) -> dict[str, Any]:
    annotations = [{"image_id": im.coco_id, "id": _caption_id(im, k), "caption": caption}
                   for im in images for k, caption in enumerate(im.captions)]
    return {**_header(images), "annotations": annotations}


def _instances_json(images: list[_Image]) -> dict[str, Any]:
    annotations = []
    for im in images:
        x0, y0, x1, y1 = BOXES[im.category["name"]]
        annotations.append({
            "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]],
            "area": float((x1 - x0) * (y1 - y0)), "iscrowd": 0, "image_id": im.coco_id,
            "bbox": [x0, y0, x1 - x0, y1 - y0],
            "category_id": im.category["id"], "id": 200_000 + im.coco_id})
    return {**_header(images), "annotations": annotations, "categories": CATEGORIES}


def _karpathy_json(images: list[_Image]) -> dict[str, Any]:
    records, sentid = [], 0
    for imgid, im in enumerate(images):
        sentences = []
        for caption in im.captions:
            tokens = re.findall(r"[a-z0-9]+", caption.lower())
            sentences.append({"tokens": tokens, "raw": caption, "imgid": imgid, "sentid": sentid})
            sentid += 1
        records.append({"filepath": im.folder, "sentids": [s["sentid"] for s in sentences],
                        "filename": im.file_name, "imgid": imgid, "split": im.split,
                        "sentences": sentences, "cocoid": im.coco_id})
    return {"images": records, "dataset": "coco"}


@dataclass
class Faults:
    """Misbehaviours applied to every request while set; tests flip them between runs."""

    drop_after: int | None = None  # send this many body bytes, then close (Content-Length honest)
    truncate_to: int | None = None  # serve only the first N bytes, as if that were the whole file
    ignore_range: bool = False  # answer Range requests with 200 and the whole file


class _Handler(BaseHTTPRequestHandler):
    def __init__(self, *args: Any, directory: Path, requests: list[tuple[str, str | None]],
                 faults: Faults, **kwargs: Any) -> None:
        # Set before super().__init__, which handles the request straight away.
        self.directory, self.requests, self.faults = directory, requests, faults
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:
        self.requests.append((self.path, self.headers.get("Range")))
        path = self.directory / PurePosixPath(urlsplit(self.path).path).name
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()[: self.faults.truncate_to]
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and not self.faults.ignore_range:
            self._send_from(data, int(match[1]))
        else:
            self._send(200, data, {})

    def _send_from(self, data: bytes, start: int) -> None:
        if start >= len(data):
            self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
        else:
            content_range = f"bytes {start}-{len(data) - 1}/{len(data)}"
            self._send(206, data[start:], {"Content-Range": content_range})

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(body)),
                           "Content-Type": "application/zip"}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body[: self.faults.drop_after])
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: test output should show the client's messages only."""


@contextmanager
def serve_directory(directory: Path, requests: list[tuple[str, str | None]] | None = None,
                    faults: Faults | None = None) -> Iterator[str]:
    """Serve the files of `directory` on 127.0.0.1 (a free port); yield the base URL.

    Every request is appended to `requests` as (path, Range header or None), so a test can assert
    what was fetched; `faults` can be changed while the server runs.
    """
    handler = partial(_Handler, directory=Path(directory),
                      requests=requests if requests is not None else [],
                      faults=faults or Faults())
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    # A short poll keeps shutdown() (and so each test's teardown) well under the 0.5 s default.
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
