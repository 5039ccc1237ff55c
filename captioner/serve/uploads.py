"""Reading a caption request's multipart body within the limits: the image fields' files and
the other fields' text. A body over the size limit is refused as soon as that is known, from
its declared length or while it streams in, never read to the end first."""

from __future__ import annotations

from aiohttp import BodyPartReader, web

from captioner.errors import one_line
from captioner.serve.captioning import Upload
from captioner.serve.options import Limits, RequestError

IMAGE_FIELD = "image"
_CHUNK = 2**16
_PLAIN = ("identity", "binary", "8bit", "7bit")


async def read_form(request: web.Request, limits: Limits) -> tuple[list[Upload], list[tuple[str, str]]]:
    """The uploaded images, in order, and the other fields as (name, text) pairs."""
    if request.content_length is not None and request.content_length > limits.max_upload_bytes:
        raise _too_large(limits)
    if request.content_type != "multipart/form-data":
        raise RequestError(415, f"send the images as multipart/form-data 'image' fields "
                                f"(curl -F image=@photo.jpg), not {request.content_type or 'no body type'}")
    uploads: list[Upload] = []
    fields: list[tuple[str, str]] = []
    budget = limits.max_upload_bytes
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise RequestError(400, "a multipart body inside a multipart body is not accepted")
            if not part.name:
                raise RequestError(400, "a multipart part without a field name; name files 'image'")
            data = await _read_part(part, budget, limits)
            budget -= len(data)
            if part.name == IMAGE_FIELD:
                if len(uploads) == limits.max_images:
                    raise RequestError(413, f"more than {limits.max_images} images in one request; "
                                            "send them in several")
                uploads.append(Upload(_file_name(part.filename, len(uploads) + 1), data))
            else:
                fields.append((part.name, data.decode("utf-8", "replace")))
    except (ValueError, AssertionError) as err:  # aiohttp's on a malformed body; asserts on a cut one
        raise RequestError(400, f"malformed multipart body: {one_line(err)}") from None
    return uploads, fields


async def _read_part(part: BodyPartReader, budget: int, limits: Limits) -> bytes:
    """One part's bytes, or a 413 once it outgrows the budget. Parts that declare an encoding
    are refused rather than expanded: a gzip part could hold a bomb of its own, and browsers
    and curl never send one (RFC 7578 deprecates them)."""
    for header in ("Content-Encoding", "Content-Transfer-Encoding"):
        if part.headers.get(header, "identity").lower() not in _PLAIN:
            raise RequestError(415, f"{header}: {part.headers[header]} is not accepted; send the "
                                    "files as they are")
    data = bytearray()
    while chunk := await part.read_chunk(_CHUNK):
        data += chunk
        if len(data) > budget:
            raise _too_large(limits)
    return bytes(data)


def _file_name(given: str | None, n: int) -> str:
    """The client's file name without any folders (old browsers send a full path)."""
    name = (given or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    return name[:200] or f"image {n}"


def _too_large(limits: Limits) -> RequestError:
    return RequestError(413, f"the request is over the {limits.max_upload_bytes / 2**20:g} MiB upload "
                             "limit (captioner serve --max-upload-mb)")
