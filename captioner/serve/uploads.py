"""Reading a caption request's multipart body within the limits: the image fields' files and
the other fields' text. A body over the size limit is refused as soon as that is known, from
its declared length or while it streams in (every byte counts, the multipart framing too),
never read to the end first; so is one of too many parts, or one that takes too long."""

from __future__ import annotations

import asyncio
import re

from aiohttp import BodyPartReader, web
from aiohttp.http import HttpProcessingError

from captioner.errors import one_line
from captioner.serve.captioning import Upload
from captioner.serve.guard import Held
from captioner.serve.options import Limits, RequestError

IMAGE_FIELD = "image"
_CHUNK = 2**16
_PLAIN = ("identity", "binary", "8bit", "7bit")
_WATCH_S = 0.05  # how often the bytes received are checked against the limit
# The file name as sent: browsers escape only quotes (as %22 or \"), so backslashes are folders
# (old browsers send C:\Users\me\x.png), not the escapes aiohttp's parser takes them for.
_RAW_FILENAME = re.compile(r'''(?:^|;)\s*filename\s*=\s*"((?:\\"|[^"])*)"''', re.IGNORECASE)
# The field name, a quoted string or a token, read here rather than by aiohttp's `part.name`:
# its Content-Disposition parser rebuilds an escaping table at every call, a cost a client
# sending nothing but empty parts can multiply (benchmarks/serve_stress.py).
_NAME = re.compile(r'''(?:^|;)\s*name\s*=\s*(?:"((?:\\"|[^"])*)"|([^;\s"]+))''', re.IGNORECASE)


Form = tuple[list[Upload], list[tuple[str, str]]]


async def read_form(request: web.Request, limits: Limits, held: Held) -> Form:
    """The uploaded images, in order, and the other fields as (name, text) pairs; the bytes
    kept are counted in `held`. The whole body must arrive within limits.body_timeout."""
    if request.content_length is not None and request.content_length > limits.max_upload_bytes:
        raise _too_large(limits)
    if request.content_type != "multipart/form-data":
        raise RequestError(415, f"send the images as multipart/form-data 'image' fields "
                                f"(curl -F image=@photo.jpg), not {request.content_type or 'no body type'}")
    reading = asyncio.ensure_future(_read_parts(request, limits, held))
    watching = asyncio.ensure_future(_past_limit(request, limits))
    try:
        await asyncio.wait((reading, watching), timeout=limits.body_timeout,
                           return_when=asyncio.FIRST_COMPLETED)
        if watching.done():
            raise _too_large(limits)
        if not reading.done():
            raise RequestError(408, f"the request's body timed out: it must arrive within "
                                    f"{limits.body_timeout:g} s")
        return reading.result()
    except (ValueError, AssertionError, HttpProcessingError) as err:  # aiohttp's on a malformed or cut body
        raise RequestError(400, f"malformed multipart body: {one_line(err)}") from None
    finally:
        reading.cancel()
        watching.cancel()


async def _past_limit(request: web.Request, limits: Limits) -> None:
    """Returns once the body's bytes received, framing included, pass the limit: aiohttp's
    reader skips a preamble or an epilogue, or reads a part's headers, without a word to us."""
    while request.content.total_bytes <= limits.max_upload_bytes:
        await asyncio.sleep(_WATCH_S)


async def _read_parts(request: web.Request, limits: Limits, held: Held) -> Form:
    uploads: list[Upload] = []
    fields: list[tuple[str, str]] = []
    parts = 0
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        _check_size(request, limits)
        parts += 1
        if parts > limits.max_parts:
            raise RequestError(413, f"more than {limits.max_parts} parts in one request (at most "
                                    f"{limits.max_images} images and each option once)")
        if not isinstance(part, BodyPartReader):
            raise RequestError(400, "a multipart body inside a multipart body is not accepted")
        name = _field_name(part)
        if not name:
            raise RequestError(400, "a multipart part without a field name; name files 'image'")
        data = await _read_part(request, part, limits, held)
        if name == IMAGE_FIELD:
            if len(uploads) == limits.max_images:
                raise RequestError(413, f"more than {limits.max_images} images in one request; "
                                        "send them in several")
            uploads.append(Upload(_file_name(part, len(uploads) + 1), data))
        else:
            fields.append((name, data.decode("utf-8", "replace")))
        # Parts already received are parsed without a pause: a body of many small parts would
        # hold the event loop for milliseconds, which every other client's request waits out.
        await asyncio.sleep(0)
    _check_size(request, limits)
    return uploads, fields


async def _read_part(request: web.Request, part: BodyPartReader, limits: Limits, held: Held) -> bytes:
    """One part's bytes, or a 413 once the body outgrows the limit. Parts that declare an
    encoding are refused rather than expanded: a gzip part could hold a bomb of its own, and
    browsers and curl never send one (RFC 7578 deprecates them)."""
    for header in ("Content-Encoding", "Content-Transfer-Encoding"):
        if part.headers.get(header, "identity").lower() not in _PLAIN:
            raise RequestError(415, f"{header}: {part.headers[header]} is not accepted; send the "
                                    "files as they are")
    data = bytearray()
    while chunk := await part.read_chunk(_CHUNK):
        _check_size(request, limits)
        held.add(len(chunk))
        data += chunk
    return bytes(data)


def _check_size(request: web.Request, limits: Limits) -> None:
    """A 413 once the body's bytes received so far, framing included, pass the limit."""
    if request.content.total_bytes > limits.max_upload_bytes:
        raise _too_large(limits)


def _field_name(part: BodyPartReader) -> str:
    """The part's field name ("" if it has none)."""
    found = _NAME.search(part.headers.get("Content-Disposition", ""))
    if found is None:
        return ""
    return found.group(1).replace('\\"', '"') if found.group(1) is not None else found.group(2)


def _file_name(part: BodyPartReader, n: int) -> str:
    """The client's file name without any folders (old browsers send a full path)."""
    raw = _RAW_FILENAME.search(part.headers.get("Content-Disposition", ""))
    given = raw.group(1).replace('\\"', '"') if raw else part.filename
    name = (given or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    return name[:200] or f"image {n}"


def _too_large(limits: Limits) -> RequestError:
    return RequestError(413, f"the request is over the {limits.max_upload_bytes / 2**20:g} MiB upload "
                             "limit (captioner serve --max-upload-mb)")
