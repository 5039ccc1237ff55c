"""`captioner serve`: a local web page and JSON API that caption uploaded images."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from captioner.cli.common import (
    at_least,
    check_header,
    checkpoint,
    checkpoint_arguments,
    command,
    positive_float,
)
from captioner.errors import CaptionerError

if TYPE_CHECKING:
    from captioner.model.inference import Captioner


def register(sub: argparse._SubParsersAction) -> None:
    p = command(sub, "serve", "serve a web page and a JSON API that caption uploaded images", [
        "captioner serve                                # http://127.0.0.1:8000/",
        "captioner serve --checkpoint best.ckpt --port 0   # any free port; its URL on stdout",
        "curl -F image=@photo.jpg -F n_best=3 http://127.0.0.1:8000/caption",
    ], extra="The page's address is printed on stdout once the model is loaded; docs/serve.md "
             "describes the API.\n\nexit status: 0 stopped (Ctrl-C or SIGTERM); 1 error (one line "
             "on stderr: a taken port, a missing checkpoint, the serve extra not installed); "
             "2 wrong command line")
    checkpoint_arguments(p)
    p.add_argument("--host", default="127.0.0.1", metavar="ADDRESS",
                   help="address to listen on; any but a loopback address lets other machines use "
                        "the model")
    p.add_argument("--port", type=_port, default=8000, metavar="N",
                   help="port to listen on; 0 picks a free one")
    p.add_argument("--max-upload-mb", type=positive_float, default=20.0, metavar="MB",
                   help="largest request body accepted, in MiB")
    p.add_argument("--max-pixels", type=at_least(1), default=None, metavar="N",
                   help="refuse larger images undecoded, as possible decompression bombs "
                        "(default: Pillow's limit, 89,478,485)")
    p.add_argument("--batch-size", type=at_least(1), default=32, metavar="N",
                   help="most images per forward pass: requests that arrive together share one")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: a faster CNN on bf16 hardware, but an image's caption then depends "
                        "on the requests it shares a batch with")


def run(args: argparse.Namespace) -> int:
    from captioner.util.console import say, warn

    _require_extra()
    ckpt = checkpoint(args)
    check_header(ckpt)
    from captioner.serve.server import is_loopback, listen, url

    with listen(args.host, args.port) as sock:  # before torch loads: a taken port fails at once
        from captioner.serve.app import build_app
        from captioner.serve.options import Limits
        from captioner.serve.server import run as run_server

        local = is_loopback(args.host)
        if not local:
            warn(f"listening on {args.host}: whoever reaches this machine can use the model")
        captioner = _load(args, ckpt)
        limits = Limits(max_upload_bytes=round(args.max_upload_mb * 2**20), batch_size=args.batch_size,
                        max_pixels=captioner.max_pixels)
        app = build_app(captioner, limits, checkpoint=str(ckpt), local_only=local)
        address = url(sock)

        def ready() -> None:
            print(address, flush=True)
            say(f"serving {address} (Ctrl-C stops)")

        run_server(app, sock, ready, access_log=args.verbose)
    say("stopped")
    return 0


def _require_extra() -> None:
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        raise CaptionerError("captioner serve needs the serve extra: pip install 'captioner[serve]' "
                             "(it adds aiohttp)") from None


def _load(args: argparse.Namespace, ckpt: Path) -> Captioner:
    from captioner.model.inference import MAX_PIXELS, Captioner
    from captioner.util.console import say
    from captioner.util.hardware import resolve_device

    say(f"loading {ckpt}")
    return Captioner.from_checkpoint(ckpt, device=resolve_device(args.device), precision=args.precision,
                                     max_pixels=args.max_pixels or MAX_PIXELS)


def _port(text: str) -> int:
    port = at_least(0)(text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"a port is at most 65535, got {port}")
    return port
