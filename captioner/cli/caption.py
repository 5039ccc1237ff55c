"""`captioner caption`: caption images, folders of images, or what arrives on stdin."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from captioner.cli.common import (
    at_least,
    check_header,
    checkpoint,
    checkpoint_arguments,
    command,
    decoding_arguments,
    decoding_given,
    random_seed,
)
from captioner.errors import CaptionerError, UsageError
from captioner.model.decoding import OPTIONS, Decoding
from captioner.util.console import counted

if TYPE_CHECKING:
    from captioner.model.inference import CaptionResult

# The first bytes of the image formats Pillow reads most: stdin holding one of these is an image,
# anything else a list of paths, one a line.
_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"RIFF", b"II*\x00", b"MM\x00*",
          b"P1", b"P2", b"P3", b"P4", b"P5", b"P6")


def register(sub: argparse._SubParsersAction) -> None:
    p = command(sub, "caption", "caption images, folders of images, or image paths or bytes on stdin", [
        "captioner caption photo.jpg",
        "captioner caption photos/ --recursive --format jsonl > captions.jsonl",
        "captioner caption photo.jpg --beam-size 5 --n-best 3 --explain why/",
        "find . -name '*.png' | captioner caption -",
    ], extra="exit status: 0 every image captioned; 1 none was (or an error); 2 wrong command "
             "line; 3 some images could not be captioned (each says why; a summary on stderr); "
             "130 interrupted")
    p.add_argument("inputs", nargs="+", metavar="IMAGE",
                   help="image files, folders (the images in them), or - for stdin (an image's "
                        "bytes, or paths one a line)")
    checkpoint_arguments(p)
    p.add_argument("--recursive", "-r", action="store_true", help="include the images in subfolders")
    decoding_arguments(p)
    p.add_argument("--seed", type=random_seed, default=None,
                   help="make sampling reproducible (implies --sample)")
    p.add_argument("--batch-size", type=at_least(1), default=32, help="images per forward pass")
    p.add_argument("--format", choices=("text", "jsonl"), default="text",
                   help="text: the caption (after the file name when the command line names "
                        "several inputs, a folder or a list on stdin); jsonl: "
                        '{"image", "caption", "score"} a line')
    p.add_argument("--explain", type=Path, metavar="DIR",
                   help="also write per-word Grad-CAM maps (overlay PNGs, a strip, maps.json) into "
                        "DIR/<image>/")
    p.add_argument("--max-pixels", type=at_least(1), default=None,
                   help="refuse larger images undecoded, as possible decompression bombs "
                        "(default: Pillow's limit, 89,478,485)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: a faster CNN on bf16 hardware, but captions then depend on the batch")


def run(args: argparse.Namespace) -> int:
    from captioner.util.console import say

    # Everything that can be checked is, before the model loads: options, checkpoint, device, paths.
    decoding = _decoding(args)
    _check_explain_folder(args.explain)
    device = _device(args.device)
    ckpt = checkpoint(args)
    inputs = _inputs(args.inputs)
    if not inputs:
        raise CaptionerError("no images given: standard input held no paths")
    tagged = _tagged(args.inputs, inputs)
    missing = {arg for arg, items in inputs if not items and not Path(arg).exists()}
    for arg in sorted(missing):
        print(f"error: {arg}: no such file", file=sys.stderr, flush=True)
    if all(arg in missing for arg, _ in inputs):
        return 1

    check_header(ckpt)
    from captioner.model.inference import MAX_PIXELS, Captioner

    captioner = Captioner.from_checkpoint(ckpt, device=device, precision=args.precision,
                                          max_pixels=args.max_pixels or MAX_PIXELS)
    counts = _caption_all(args, captioner, inputs, decoding, missing, tagged)
    if counts["failed"] or counts["empty"]:
        say(_summary(counts))
    return 0 if not counts["failed"] + counts["empty"] else 1 if not counts["captioned"] else 3


def _summary(counts: dict[str, int]) -> str:
    """"1 of 3 images could not be captioned; 1 input gave no images (each error above)": images
    and the inputs that stood for none (a missing path, an empty folder) counted apart."""
    parts = []
    if counts["failed"]:
        total = counts["captioned"] + counts["failed"]
        parts.append(f"{counts['failed']} of {counted(total, 'image')} could not be captioned")
    if counts["empty"]:
        parts.append(f"{counted(counts['empty'], 'input')} gave no images")
    return "; ".join(parts) + " (each error above)"


def _tagged(args: list[str], given: list[tuple[str, list[Any]]]) -> bool:
    """Whether text lines name their image: when the command line names several inputs, a folder
    or a list of paths on stdin; never because of which of those files exist or can be read."""
    if len(args) > 1:
        return True
    if args == ["-"]:
        return not (len(given) == 1 and given[0][0] == "-")  # stdin held paths, not an image
    return Path(args[0]).is_dir()


def _check_explain_folder(folder: Path | None) -> None:
    """--explain names a folder to create or fill: a file there (or above it) would only fail
    after the captions were printed."""
    if folder is None:
        return
    for path in (folder, *folder.parents):
        if path.exists():
            if not path.is_dir():
                raise UsageError(f"--explain {folder}: {path} is a file; give a folder (it is "
                                 "created if missing)")
            return


def _device(name: str) -> Any:
    """The device, checked before the checkpoint loads (torch only when a GPU is asked for)."""
    if name in ("auto", "cpu"):
        return name
    from captioner.util.hardware import resolve_device

    return resolve_device(name)


def _decoding(args: argparse.Namespace) -> Decoding:
    from captioner.util.console import say

    given = decoding_given(args)
    implied = [f"--{name.replace('_', '-')}" for name in given if OPTIONS[name].metadata["sampling"]]
    implied += ["--seed"] if args.seed is not None else []
    if implied and not args.sample:
        say(f"sampling captions: {', '.join(implied)} implies --sample")
    try:
        return Decoding.of(**{**given, "sample": args.sample or bool(implied)})
    except CaptionerError as err:
        raise UsageError(f"{err} (see captioner caption --help)") from None


def _inputs(args: list[str]) -> list[tuple[str, list[Any]]]:
    """Each argument with what it stands for: a file, a folder's images, or stdin's contents."""
    if args.count("-") > 1:
        raise CaptionerError("stdin (-) can be read once only")
    given = []
    for arg in args:
        if arg != "-":
            given.append((arg, []))
            continue
        data = sys.stdin.buffer.read()
        if data.startswith(_MAGIC):
            from io import BytesIO

            image = BytesIO(data)
            image.name = "<stdin>"
            given.append(("-", [image]))
        else:
            lines = data.decode("utf-8", "replace").splitlines()
            given.extend((line.strip(), []) for line in lines if line.strip())
    return given


def _caption_all(args: argparse.Namespace, captioner: Any, given: list[tuple[str, list[Any]]],
                 decoding: Any, missing: set[str], tagged: bool) -> dict[str, int]:
    """Caption every input, printing each result as it comes, in the order given (a missing path
    was already reported on stderr: its jsonl record comes here); how many succeeded and failed."""
    import itertools

    from captioner.model.inference import expand_folder
    from captioner.util.console import say

    expanded = []
    for arg, items in given:
        if arg in missing:
            expanded.append((arg, None))
            continue
        listing = expand_folder(arg, args.recursive) if not items else None
        if listing is not None and listing.note():
            say(f"{arg}: {listing.note()}")
        expanded.append((arg, items or [str(p) for p in listing.images]))
    flat = [item for _, items in expanded if items for item in items]
    seed = args.seed if decoding.sample else None
    results = captioner.stream(flat, decoding, seed=seed, batch_size=args.batch_size,
                               explain=args.explain is not None)
    names = _explanation_folders(args, flat)
    counts = {"captioned": 0, "failed": 0, "empty": 0}
    for arg, items in expanded:  # results in the order the inputs were given
        if items is None or not items:
            counts["empty"] += 1
            message = f"{arg}: no such file" if items is None else f"{arg}: no images in this folder"
            _report(args.format, arg, message, terminal=items is not None)
            continue
        for result in itertools.islice(results, len(items)):
            counts["failed" if result.error else "captioned"] += 1
            _print(args, result, tagged=tagged)
            if result.explanations is not None:
                _write_explanation(args.explain, names[result.image], result)
    return counts


def _explanation_folders(args: argparse.Namespace, images: list[Any]) -> dict[str, str]:
    if args.explain is None:
        return {}
    from captioner.model.explain_files import folder_names

    names = [getattr(x, "name", str(x)) for x in images]
    return dict(zip(names, folder_names(names)))


def _write_explanation(out: Path, name: str, result: CaptionResult) -> None:
    from captioner.model.explain_files import write_explanation
    from captioner.util.console import say

    written = write_explanation(out / name, result.image, result.explanations)
    say(f"{result.image}: word maps in {(out / name).resolve()} ({counted(len(written), 'file')})")


def _print(args: argparse.Namespace, result: CaptionResult, *, tagged: bool) -> None:
    """One result: jsonl, n-best lines with log-probabilities, or the caption (after the
    image's name when there are several)."""
    if result.error is not None:
        _report(args.format, result.image, result.error)
    elif args.format == "jsonl":
        record = {"image": result.image, "caption": result.text, "score": result.score}
        if args.n_best > 1:
            record["n_best"] = [{"caption": c.text, "logprob": c.logprob, "score": c.score}
                                for c in result.captions]
        print(json.dumps(record), flush=True)
    elif args.n_best > 1:
        lines = [f"  {c.logprob:8.3f}  {c.text}" for c in result.captions]
        print("\n".join([result.image, *lines]), flush=True)
    else:
        print(f"{result.image}\t{result.text}" if tagged else result.text, flush=True)


def _report(fmt: str, image: str, message: str, terminal: bool = True) -> None:
    """A failed image: a jsonl record on stdout (so the stream stays complete) and, unless it was
    said already, a line on stderr."""
    if fmt == "jsonl":
        print(json.dumps({"image": image, "error": message}), flush=True)
    if terminal:
        print(f"error: {message}", file=sys.stderr, flush=True)
