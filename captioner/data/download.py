"""Fetch COCO 2014 and Karpathy's splits: download (resumable), verify, extract, mark complete.

Each archive goes through the same steps, and each step leaves a state a rerun can pick up:

    DIR/<archive>.part  ──all bytes──► DIR/<archive>  ──size + SHA-256 (or CRCs) ok──►
        every member into DIR/..., file by file  ──► DIR/.complete/<archive>.done  (written last)

A rerun skips archives whose marker exists, resumes a `.part` with an HTTP Range request, and
re-verifies an archive before extracting it. A failure never writes the marker. Nothing a user
made is removed: members merge into existing folders file by file (a file already there must be
the archive's own, else the run stops and names it), an archive copied in by hand that fails
verification is kept under another name, and two downloaders cannot share one folder at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import sys
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from http.client import HTTPException, HTTPResponse
from pathlib import Path, PurePosixPath
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from tqdm import tqdm

from captioner.errors import CaptionerError
from captioner.util.atomic import atomic_path, write_json
from captioner.util.locks import flock

CHUNK_BYTES = 1 << 20
DEFAULT_TIMEOUT_S = 60.0
LOCK_FILE = ".download.lock"


class DownloadError(CaptionerError):
    """One archive could not be fetched or verified; the message is a single line."""


@dataclass(frozen=True)
class Archive:
    name: str
    url: str
    provides: tuple[str, ...]  # top-level zip entries that end up in DIR; the rest is skipped
    size: int | None  # exact byte size; None where nobody published one
    sha256: str | None  # published SHA-256 of the whole archive; None where nobody published one
    download_estimate: int  # bytes, for --dry-run only
    extracted_estimate: int  # bytes of `provides` once extracted, approximate, for --dry-run only


_GB = 10**9
# Sizes and SHA-256 sums: COCO publishes neither; these are the ones TensorFlow Datasets recorded
# for the same URLs (tensorflow_datasets/url_checksums/coco_captions.txt), whose sizes match the
# server's. Extracted sizes are approximate (JPEGs barely compress; the JSONs inflate ~3.7x).
ARCHIVES: dict[str, Archive] = {
    a.name: a
    for a in (
        Archive("train2014.zip", "http://images.cocodataset.org/zips/train2014.zip", ("train2014",),
                13_510_573_713, "ede4087e640bddba550e090eae701092534b554b42b05ac33f0300b984b31775",
                13_510_573_713, int(13.5 * _GB)),
        Archive("val2014.zip", "http://images.cocodataset.org/zips/val2014.zip", ("val2014",),
                6_645_013_297, "fe9be816052049c34717e077d9e34aa60814a55679f804cd043e3cbee3b9fde0",
                6_645_013_297, int(6.6 * _GB)),
        Archive("annotations_trainval2014.zip",
                "http://images.cocodataset.org/annotations/annotations_trainval2014.zip",
                ("annotations",), 252_872_794,
                "031296bbc80c45a1d1f76bf9a90ead27e94e99ec629208449507a4917a3bf009",
                252_872_794, int(0.95 * _GB)),
        Archive("caption_datasets.zip",
                "https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip",
                ("dataset_coco.json", "dataset_flickr8k.json", "dataset_flickr30k.json"), 36_745_453,
                "4cfd70132527b80933105e5829dc9034eaab9573482e2e680abbab6130244817",
                36_745_453, int(0.2 * _GB)),
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
        if err.code == 416 and offset:  # nothing left to send from `offset`
            total = _unsatisfied_total(err.headers.get("Content-Range"))
            if offset == (total if total is not None else expected_size):
                return  # the .part is already the whole file
            part.unlink()  # not a prefix of what the server has now
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


def _unsatisfied_total(content_range: str | None) -> int | None:
    """The file size a 416 answer states ("bytes */12345"), if it states one."""
    match = re.fullmatch(r"bytes \*/(\d+)", content_range or "")
    return int(match[1]) if match else None


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


def verify(path: Path, archive: Archive) -> None:
    """Check size and SHA-256 where published (else every member's CRC), and the layout."""
    problem = _size_problem(path, archive.size) or _zip_problem(path, archive)
    if problem is not None:
        raise DownloadError(problem)


def _size_problem(path: Path, expected: int | None) -> str | None:
    size = path.stat().st_size
    return f"size is {size} bytes, expected {expected}" if expected is not None and size != expected else None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f, tqdm(total=path.stat().st_size, unit="B", unit_scale=True,
                                     desc=f"sha256 {path.name}", file=sys.stderr, disable=None) as bar:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def _zip_problem(path: Path, archive: Archive) -> str | None:
    if not zipfile.is_zipfile(path):
        return "not a zip archive (truncated, or an error page?)"
    if archive.sha256 is not None and sha256_of(path) != archive.sha256:
        return f"SHA-256 differs from the published {archive.sha256[:12]}... (damaged or another file)"
    try:
        with zipfile.ZipFile(path) as opened:
            unreadable = _unreadable_member(opened)
            if unreadable is not None:
                return unreadable
            # With a published SHA-256 the bytes are the official ones; otherwise read every member.
            bad_member = None if archive.sha256 is not None else opened.testzip()
            missing = set(archive.provides) - {_top(name) for name in opened.namelist()}
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:  # testzip lets these escape
        return f"corrupt zip ({err})"
    if bad_member is not None:
        return f"bad CRC in member {bad_member}"
    if missing:
        return f"archive lacks {', '.join(sorted(missing))}"
    return None


def _unreadable_member(archive: zipfile.ZipFile) -> str | None:
    """A member zipfile cannot extract: encrypted, or compressed by a method it does not know."""
    for member in archive.infolist():
        if member.flag_bits & 0x1:
            return f"member {member.filename} is encrypted; the official archives are not"
        if member.compress_type not in _METHODS:
            return f"member {member.filename} uses compression method {member.compress_type}, which " \
                   "Python's zipfile cannot read"
    return None


_METHODS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA})


def _top(member: str) -> str:
    return member.split("/")[0]


def extract(path: Path, root: Path, provides: tuple[str, ...]) -> None:
    """Extract the `provides` entries into root file by file, merging with what is already there.

    Each file is written beside its target and renamed into place, so it appears whole or not at
    all. A file already present is kept if it is the archive's own (same size and CRC, e.g. from
    an interrupted run); any other file in the way stops the extraction, naming it.
    """
    with zipfile.ZipFile(path) as archive:
        members = [m for m in archive.infolist() if _top(m.filename) in provides and not m.is_dir()]
        targets = [(m, _target(root, m.filename)) for m in members]
        pending = [(m, t) for m, t in targets if not _already_there(m, t)]
        _check_space(root, sum(m.file_size for m, _ in pending), path.name)
        for member, target in tqdm(pending, desc=f"extract {path.name}", unit="file",
                                   file=sys.stderr, disable=None):
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(target) as tmp, archive.open(member) as source, open(tmp, "wb") as out:
                shutil.copyfileobj(source, out, CHUNK_BYTES)


def _target(root: Path, name: str) -> Path:
    """Where a member goes; a name that would leave `root` (absolute, or with ..) is refused."""
    parts = PurePosixPath(name).parts
    if not parts or PurePosixPath(name).is_absolute() or ".." in parts:
        raise DownloadError(f"refusing member {name!r}: its path leaves {root}")
    return root.joinpath(*parts)


def _already_there(member: zipfile.ZipInfo, target: Path) -> bool:
    if not target.exists():
        return False
    if target.is_file() and target.stat().st_size == member.file_size and _crc32(target) == member.CRC:
        return True
    raise DownloadError(f"{target} is in the way: it is not the archive's {member.filename}; move it "
                        "elsewhere and rerun (nothing of yours is replaced)")


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            crc = zlib.crc32(chunk, crc)
    return crc


def _check_space(root: Path, need: int, name: str) -> None:
    free = shutil.disk_usage(root).free
    if need > free:
        raise DownloadError(f"extracting {name} needs {_gb(need)} free in {root}, {_gb(free)} are free")


def _set_aside(path: Path) -> Path:
    """Rename an archive that failed verification to <name>.rejected (-2, -3...): kept, not used."""
    n = 1
    while True:
        kept = path.with_name(f"{path.name}.rejected" + (f"-{n}" if n > 1 else ""))
        if not kept.exists():
            os.replace(path, kept)
            return kept
        n += 1


def fetch(archive: Archive, root: Path, *, mirror: str | None = None,
          keep_archive: bool = False, timeout: float = DEFAULT_TIMEOUT_S) -> None:
    """Download, verify and extract one archive unless it is already complete."""
    if is_complete(archive, root):
        print(f"{archive.name}: already complete", flush=True)
        return
    url = archive_url(archive, mirror)
    zip_path = root / archive.name
    downloaded = not zip_path.exists()  # an archive already here (copied by hand) is the user's
    try:
        if downloaded:
            part = zip_path.with_name(f"{archive.name}.part")
            start = f"resuming at byte {part.stat().st_size}" if part.exists() else "downloading"
            print(f"{archive.name}: {start} {url} -> {zip_path}", flush=True)
            download(url, part, archive.size, timeout)
            os.replace(part, zip_path)
        print(f"{archive.name}: verifying", flush=True)
        _verify_or_set_aside(zip_path, archive, downloaded)
        extract(zip_path, root, archive.provides)
        write_json(marker_path(archive, root), {"archive": archive.name, "url": url,
                                                "bytes": zip_path.stat().st_size})
        if downloaded and not keep_archive:
            zip_path.unlink()
    except DownloadError as err:
        raise DownloadError(f"{archive.name}: {err}") from None
    except (OSError, HTTPException) as err:
        raise DownloadError(f"{archive.name}: {_describe(err, url)}") from None
    print(f"{archive.name}: complete ({', '.join(archive.provides)})", flush=True)


def _verify_or_set_aside(path: Path, archive: Archive, downloaded: bool) -> None:
    """verify(); a bad download is deleted (a rerun fetches it again), a hand-copied file kept."""
    try:
        verify(path, archive)
    except DownloadError as err:
        if downloaded:
            path.unlink()
            raise
        kept = _set_aside(path)
        raise DownloadError(f"{err}; the archive you put here is kept as {kept.name}, and a rerun "
                            "downloads a fresh copy") from None


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
                  timeout: float = DEFAULT_TIMEOUT_S, checksums: Path | None = None) -> None:
    """Fetch the named archives in order, stopping at the first failure (a rerun resumes).

    `checksums`: a file of "<archive name> <bytes> <sha256>" lines that replace the pinned ones
    (a mirror that serves other builds of the archives, or archives checked by you)."""
    archives = with_checksums(ARCHIVES, checksums) if checksums else ARCHIVES
    root.mkdir(parents=True, exist_ok=True)
    with flock(root / LOCK_FILE, wait=False) as locked:
        if not locked:
            raise DownloadError(f"another download into {root} is running (it holds {root / LOCK_FILE}); "
                                "wait for it to finish, then rerun")
        for name in names:
            fetch(archives[name], root, mirror=mirror, keep_archive=keep_archives, timeout=timeout)


def with_checksums(archives: dict[str, Archive], path: Path) -> dict[str, Archive]:
    """`archives` with the sizes and SHA-256 sums a checksum file gives for some of them."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DownloadError(f"--checksums: cannot read {path} ({err})") from None
    updated = dict(archives)
    for number, line in enumerate(lines, start=1):
        fields = line.split("#")[0].split()
        if not fields:
            continue
        name = fields[0].rsplit("/", 1)[-1]
        if len(fields) != 3 or name not in archives or not fields[1].isdigit() \
                or not re.fullmatch(r"[0-9a-f]{64}", fields[2]):
            raise DownloadError(f"{path}:{number}: expected '<archive name> <bytes> <sha256>' for one "
                                f"of {', '.join(archives)}")
        updated[name] = dataclasses.replace(archives[name], size=int(fields[1]), sha256=fields[2])
    return updated
