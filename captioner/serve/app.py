"""The aiohttp application: the page, `POST /caption`, `GET /health`.

Every error answers JSON `{"error": "<one line>"}` with a 4xx status (5xx only for a failure of
the server itself, which then goes on serving); a client that goes away before its answer is
one quiet line, not a failure. Bound to a loopback address, the server answers only requests
addressed to a loopback name, so a web page elsewhere cannot reach it through DNS rebinding; and
whatever the address, a POST from another origin's page (which a browser sends without asking,
as a "simple" request) is refused, so no web page can make it work.
"""

from __future__ import annotations

import asyncio
import sys
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from importlib import resources

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from captioner.errors import one_line
from captioner.model.inference import Captioner
from captioner.serve.batching import Batcher
from captioner.serve.captioning import Captioned, Job, Pass
from captioner.serve.guard import GUARD, Guard
from captioner.serve.lanes import Decoder
from captioner.serve.options import Limits, RequestError, parse_options
from captioner.serve.records import result_record
from captioner.serve.server import is_loopback
from captioner.serve.uploads import read_form
from captioner.util.console import say

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The page's own files only; data: and blob: for the uploaded images and the network's view.
_CSP = ("default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'; form-action 'self'")
_PAGE_FILES = {"/": ("index.html", "text/html"), "/app.js": ("app.js", "text/javascript"),
               "/app.css": ("app.css", "text/css")}


@dataclass
class State:
    """What the handlers share: the model, the limits, the decoder, the batcher."""

    captioner: Captioner
    limits: Limits
    decoder: Decoder
    batcher: Batcher[Job, Captioned]
    checkpoint: str  # as the health answer names it


STATE = web.AppKey("state", State)


def build_app(captioner: Captioner, limits: Limits, *, checkpoint: str, local_only: bool) -> web.Application:
    """The application around a loaded Captioner; `local_only` refuses requests whose Host is
    not a loopback name."""
    middlewares = [_guarded, _json_errors, *([_loopback_hosts] if local_only else []), _same_origin]
    app = web.Application(middlewares=middlewares)
    batcher: Batcher[Job, Captioned] = Batcher(Pass(captioner), limits.batch_size)
    app[STATE] = State(captioner, limits, Decoder(captioner, limits), batcher, checkpoint)
    app[GUARD] = Guard(limits)
    app.cleanup_ctx.append(_model_thread)
    app.on_response_prepare.append(_security_headers)
    for path, (name, content_type) in _PAGE_FILES.items():
        app.router.add_get(path, _page_file(name, content_type))
    app.router.add_get("/health", health)
    app.router.add_post("/caption", caption)
    return app


async def caption(request: web.Request) -> web.Response:
    """Caption the request's images; see docs/serve.md for the fields and the answer."""
    server = request.app[STATE]
    with request.app[GUARD].holding() as held:
        uploads, fields = await read_form(request, server.limits, held)
        request.app[GUARD].body_read(request)
        options = parse_options([*request.query.items(), *fields])
        if not uploads:
            raise RequestError(400, "no images: send one or more multipart 'image' fields "
                                    "(curl -F image=@photo.jpg)")
        # Decoding runs beside the model's thread, so the next batch is ready when a pass ends.
        images = await server.decoder.decode(uploads)
    loop = asyncio.get_running_loop()
    captioned = await server.batcher.submit([Job(image, options) for image in images])
    # The answer (PNG-encoded maps with explain) is built off the event loop, which keeps reading
    # other requests meanwhile.
    records = await loop.run_in_executor(
        None, lambda: [result_record(upload.name, one) for upload, one in zip(uploads, captioned)])
    return web.json_response({"results": records})


async def health(request: web.Request) -> web.Response:
    """200 once the model is loaded (the server listens only then): what it serves and its limits."""
    server = request.app[STATE]
    return web.json_response({"status": "ok", "checkpoint": server.checkpoint,
                              "device": str(server.captioner.device), "limits": asdict(server.limits),
                              "forward_passes": server.batcher.passes})


def _page_file(name: str, content_type: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    body = (resources.files("captioner.serve") / "static" / name).read_bytes()

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=content_type, charset="utf-8")
    return handler


async def _model_thread(app: web.Application) -> AsyncIterator[None]:
    batcher = app[STATE].batcher
    batcher.start()
    yield
    await batcher.stop()
    app[STATE].decoder.close()


@web.middleware
async def _guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
    guard = request.app[GUARD]
    guard.request_started(request)
    try:
        return await handler(request)
    finally:
        guard.request_done(request)


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except RequestError as err:
        status, message = err.status, str(err)
        if status in (408, 413):  # the rest of the body is not worth waiting for, nor reading
            request.app[GUARD].body_refused(request)
            response = web.json_response({"error": message}, status=status)
            response.force_close()
            return response
    except (ConnectionError, RequestPayloadError) as err:  # the client went away: nobody to answer
        say(f"{request.method} {request.path}: the client closed the connection before its answer "
            f"({one_line(err)})")
        return web.json_response({"error": "the client closed the connection"}, status=400)
    except web.HTTPException as err:
        if err.status < 400:
            raise
        allow = {"Allow": err.headers["Allow"]} if "Allow" in err.headers else {}  # with a 405
        return web.json_response({"error": f"{request.method} {request.path}: {err.reason}"},
                                 status=err.status, headers=allow)
    except Exception as err:  # a bug or an exhausted machine: say so, and keep serving
        status, message = 500, f"the server failed: {one_line(err)}"
        # Printed even with --quiet, with the traceback: a failure of the server must leave a trace.
        print(f"error: {request.method} {request.path}: {message}", file=sys.stderr, flush=True)
        traceback.print_exc()
    return web.json_response({"error": message}, status=status)


@web.middleware
async def _loopback_hosts(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not is_loopback(_host_name(request.host)):
        raise RequestError(403, f"Host {request.host!r} refused: this server answers to localhost, "
                                "127.0.0.1 and [::1] only (captioner serve --host changes that)")
    return await handler(request)


@web.middleware
async def _same_origin(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse a POST sent by another site's page: browsers say where it came from (Sec-Fetch-Site,
    Origin); curl and scripts send neither, and the server's own page says "same-origin"."""
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        site = request.headers.get("Sec-Fetch-Site", "same-origin").lower()
        origin = request.headers.get("Origin")
        own = f"{request.scheme}://{request.host}"
        if site not in ("same-origin", "none") or (origin is not None and origin.lower() != own.lower()):
            raise RequestError(403, f"a cross-origin request (Origin {origin or 'not sent'}, Sec-Fetch-Site "
                                    f"{site}) is refused: only this server's own page may post to it")
    return await handler(request)


def _host_name(host: str) -> str:
    """The name in a Host header, without its port or an IPv6 address's brackets."""
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("Content-Security-Policy", _CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    response.headers.setdefault("Cache-Control", "no-store")
