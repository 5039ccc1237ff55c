"""Fetch COCO 2014 and Karpathy's split: download (resumable), verify, extract, mark complete.

Each archive goes through the same steps, and each step leaves a state a rerun can pick up:

    DIR/<archive>.part  ──all bytes──► DIR/<archive>  ──size + CRC ok──► DIR/.extract-<archive>/
        ──rename──► DIR/train2014/ ...  ──► DIR/.complete/<archive>.done  (written last)

A rerun skips archives whose marker exists, resumes a `.part` with an HTTP Range request, and
re-verifies a downloaded archive before extracting it. A failure never writes the marker.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from http.client import HTTPException, HTTPResponse
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit
from urllib.request import Request, urlopen

from tqdm import tqdm

from captioner.atomic import write_json
from captioner.errors import CaptionerError

CHUNK_BYTES = 1 << 20
DEFAULT_TIMEOUT_S = 60.0


class DownloadError(CaptionerError):
    """One archive could not be fetched or verified; the message is a single line."""


@dataclass(frozen=True)
class Archive:
    name: str
    url: str
    provides: tuple[str, ...]  # top-level zip entries that end up in DIR; the rest is skipped
    size: int | None  # exact byte size of the official archive; None where none is published
    download_estimate: int  # bytes, for --dry-run only
    extracted_estimate: int  # bytes of `provides` once extracted, approximate, for --dry-run only


_GB = 10**9
# Extracted sizes are approximate (JPEGs barely compress, so the image folders are about as large
# as their zips; the annotation JSONs inflate about 3.7x). caption_datasets.zip publishes no size.
ARCHIVES: dict[str, Archive] = {
    a.name: a
    for a in (
        Archive("train2014.zip", "http://images.cocodataset.org/zips/train2014.zip",
                ("train2014",), 13_510_573_713, 13_510_573_713, int(13.5 * _GB)),
        Archive("val2014.zip", "http://images.cocodataset.org/zips/val2014.zip",
                ("val2014",), 6_645_013_297, 6_645_013_297, int(6.6 * _GB)),
        Archive("annotations_trainval2014.zip",
                "http://images.cocodataset.org/annotations/annotations_trainval2014.zip",
                ("annotations",), 252_872_794, 252_872_794, int(0.95 * _GB)),
        Archive("caption_datasets.zip",
                "http://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip",
                ("dataset_coco.json", "dataset_flickr8k.json", "dataset_flickr30k.json"), None,
                int(0.04 * _GB), int(0.15 * _GB)),
    )
}
ARCHIVE_NAMES = tuple(ARCHIVES)


def archive_url(archive: Archive, mirror: str | None) -> str:
    return f"{mirror.rstrip('/')}/{archive.name}" if mirror else archive.url


def marker_path(archive: Archive, root: Path) -> Path:
    return root / ".complete" / f"{archive.name}.done"


def is_complete(archive: Archive, root: Path) -> bool:
    # The marker alone is not enough: a user may have deleted the extracted folder since.
    extracted = all((root / entry).exists() for entry in archive.provides)
    return extracted and marker_path(archive, root).exists()


def download(url: str, part: Path, expected_size: int | None, timeout: float) -> None:
    """Stream `url` into `part`, resuming from the bytes already there; raise if it ends short."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        response = urlopen(Request(url, headers=headers), timeout=timeout)
    except HTTPError as err:
        if err.code == 416 and offset:  # the .part is not a prefix of what the server has now
            part.unlink()
            return download(url, part, expected_size, timeout)
        raise
    with response:
        try:
            offset, total = _resume_point(response, offset)
        except DownloadError:
            part.unlink()  # this server cannot resume it, so let the rerun start from zero
            raise
        if expected_size is not None and total is not None and total != expected_size:
            raise DownloadError(f"{url} announces {total} bytes, expected {expected_size}")
        _stream(response, part, offset, total)


def _resume_point(response: HTTPResponse, offset: int) -> tuple[int, int | None]:
    """Where the body starts in the file, and the file's total size if the server says."""
    if response.status == 206:
        match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", ""))
        if not match or int(match[1]) != offset:
            raise DownloadError(f"asked to resume at byte {offset}, server sent "
                                f"Content-Range {response.headers.get('Content-Range')!r}")
        return offset, None if match[2] == "*" else int(match[2])
    # 200: the server ignored Range and sends the whole file, so start over.
    length = response.headers.get("Content-Length")
    return 0, int(length) if length else None


def _stream(response: HTTPResponse, part: Path, offset: int, total: int | None) -> None:
    with open(part, "ab" if offset else "wb") as out, tqdm(
        total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
        desc=part.name.removesuffix(".part"), file=sys.stderr, disable=None,
    ) as bar:
        try:
            while chunk := response.read(CHUNK_BYTES):
                out.write(chunk)
                bar.update(len(chunk))
        except (HTTPException, TimeoutError, ConnectionError) as err:
            got = out.tell()
            raise DownloadError(f"connection lost after {got} bytes ({_describe(err)}); "
                                "rerun to resume") from None
        got = out.tell()
    # urllib returns an empty read when the connection closes early, so compare with the header.
    if total is not None and got != total:
        raise DownloadError(f"truncated: got {got} of {total} bytes; rerun to resume")


def verify(path: Path, expected_size: int | None, provides: tuple[str, ...]) -> None:
    """Check size (if known), every member's CRC and the layout; delete the archive if wrong."""
    problem = _zip_problem(path, expected_size, provides)
    if problem is not None:
        path.unlink()
        raise DownloadError(problem)


def _zip_problem(path: Path, expected_size: int | None, provides: tuple[str, ...]) -> str | None:
    size = path.stat().st_size
    if expected_size is not None and size != expected_size:
        return f"size is {size} bytes, expected {expected_size}"
    if not zipfile.is_zipfile(path):
        return "not a zip archive (truncated, or an error page?)"
    try:
        with zipfile.ZipFile(path) as archive:
            bad_member = archive.testzip()
            missing = set(provides) - {_top(name) for name in archive.namelist()}
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:  # testzip lets these escape
        return f"corrupt zip ({err})"
    if bad_member is not None:
        return f"bad CRC in member {bad_member}"
    if missing:
        return f"archive lacks {', '.join(sorted(missing))}"
    return None


def _top(member: str) -> str:
    return member.split("/")[0]


def extract(path: Path, root: Path, provides: tuple[str, ...]) -> None:
    """Extract the `provides` entries of the zip into root, each appearing whole or not at all."""
    staging = root / f".extract-{path.name}"
    shutil.rmtree(staging, ignore_errors=True)  # left over from an interrupted run
    with zipfile.ZipFile(path) as archive:
        members = [m for m in archive.infolist() if _top(m.filename) in provides]
        for member in tqdm(members, desc=f"extract {path.name}", unit="file",
                           file=sys.stderr, disable=None):
            archive.extract(member, staging)
    for entry in provides:
        target = root / entry
        if target.is_dir():  # a copy from a run that died before writing its marker
            shutil.rmtree(target)
        os.replace(staging / entry, target)
    shutil.rmtree(staging)


def fetch(archive: Archive, root: Path, *, mirror: str | None = None,
          keep_archive: bool = False, timeout: float = DEFAULT_TIMEOUT_S) -> None:
    """Download, verify and extract one archive unless it is already complete."""
    if is_complete(archive, root):
        print(f"{archive.name}: already complete", flush=True)
        return
    url = archive_url(archive, mirror)
    # Published sizes describe the official files; a mirror is checked by its own headers + CRCs.
    expected_size = archive.size if mirror is None else None
    zip_path = root / archive.name
    try:
        root.mkdir(parents=True, exist_ok=True)
        if not zip_path.exists():  # an archive already here (e.g. copied by hand) is reused
            part = zip_path.with_name(f"{archive.name}.part")
            start = f"resuming at byte {part.stat().st_size}" if part.exists() else "downloading"
            print(f"{archive.name}: {start} {url} -> {zip_path}", flush=True)
            download(url, part, expected_size, timeout)
            os.replace(part, zip_path)
        print(f"{archive.name}: verifying", flush=True)
        verify(zip_path, expected_size, archive.provides)
        extract(zip_path, root, archive.provides)
        write_json(marker_path(archive, root), {"archive": archive.name, "url": url,
                                                "bytes": zip_path.stat().st_size})
        if not keep_archive:
            zip_path.unlink()
    except DownloadError as err:
        raise DownloadError(f"{archive.name}: {err}") from None
    except (OSError, HTTPException) as err:
        raise DownloadError(f"{archive.name}: {_describe(err, url)}") from None
    print(f"{archive.name}: complete ({', '.join(archive.provides)})", flush=True)


def _describe(err: BaseException, url: str = "") -> str:
    """One line for an I/O failure, without the exception class names users need not know."""
    if isinstance(err, HTTPError):
        return f"HTTP {err.code} {err.reason} from {url}"
    if isinstance(err, URLError):
        reason = err.reason
        return f"cannot reach {url}: {getattr(reason, 'strerror', None) or reason}"
    if isinstance(err, TimeoutError):
        return f"no data from {url or 'server'} within the timeout"
    if isinstance(err, OSError) and err.strerror:
        return f"{err.strerror}: {err.filename}" if err.filename else err.strerror
    return str(err) or type(err).__name__


def plan(root: Path, names: Sequence[str], mirror: str | None) -> str:
    """What a run would fetch, and the disk space it needs (archive + extracted, approximate)."""
    lines, needed = [], 0
    for archive in (ARCHIVES[n] for n in names):
        if is_complete(archive, root):
            lines.append(f"{archive.name}: already complete")
            continue
        size = archive.size or archive.download_estimate
        needed += size + archive.extracted_estimate
        approx = "" if archive.size else "~"
        lines.append(f"{archive.name}: {archive_url(archive, mirror)} -> {root / archive.name}\n"
                     f"    download {approx}{_gb(size)}, extracts "
                     f"{', '.join(archive.provides)} (~{_gb(archive.extracted_estimate)})")
    existing = next(p for p in (root, *root.parents) if p.exists())
    lines.append(f"disk space needed: ~{_gb(needed)} (official archive sizes + extracted sizes, "
                 f"which are approximate), free on {existing}: "
                 f"{_gb(shutil.disk_usage(existing).free)}")
    return "\n".join(lines)


def _gb(n: int) -> str:
    return f"{n / _GB:.2f} GB"


def download_coco(root: Path, names: Sequence[str] = ARCHIVE_NAMES, *,
                  mirror: str | None = None, keep_archives: bool = False,
                  timeout: float = DEFAULT_TIMEOUT_S) -> None:
    """Fetch the named archives in order, stopping at the first failure (a rerun resumes)."""
    for name in names:
        fetch(ARCHIVES[name], root, mirror=mirror, keep_archive=keep_archives, timeout=timeout)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Download and extract COCO 2014 images, annotations and Karpathy's split.")
    parser.add_argument("--root", type=Path, required=True, help="folder to fill")
    parser.add_argument("--mirror", type=_http_url,
                        help="fetch every archive as MIRROR/<archive name> instead")
    parser.add_argument("--dry-run", action="store_true",
                        help="list URLs, destinations and disk space; download nothing")
    parser.add_argument("--only", nargs="+", choices=ARCHIVE_NAMES, metavar="NAME",
                        help=f"fetch only these archives: {', '.join(ARCHIVES)}")
    parser.add_argument("--keep-archives", action="store_true",
                        help="keep the zips after extraction (deleted by default to save ~20 GB)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                        help="seconds to wait for the server before giving up")
    return parser.parse_args(argv)


def _http_url(value: str) -> str:
    # urllib would raise a bare ValueError (a traceback) on anything else.
    if urlsplit(value).scheme not in ("http", "https"):
        raise argparse.ArgumentTypeError(f"not an http(s) URL: {value!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    names = args.only or ARCHIVE_NAMES
    if args.dry_run:
        print(plan(args.root, names, args.mirror))
        return 0
    try:
        download_coco(args.root, names, mirror=args.mirror, keep_archives=args.keep_archives,
                      timeout=args.timeout)
    except CaptionerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
