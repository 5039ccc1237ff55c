"""`captioner data`: write the built-in shapes dataset, fetch COCO 2014 and Karpathy's splits, or
import your own captioned images."""

from __future__ import annotations

import argparse
from pathlib import Path

from captioner.cli.common import at_least, command, positive_float, random_seed
from captioner.config import ShapesConfig
from captioner.errors import CaptionerError

# What one command may ask of the generator: a million images per split is hours and gigabytes
# already; 1024 px is eight times the default side (a larger one is only slower, never better).
MAX_IMAGES = 1_000_000
MAX_SIZE = 1024


def register(sub: argparse._SubParsersAction) -> None:
    p = command(sub, "data", "write datasets: the built-in shapes set anywhere, COCO 2014 with "
                             "Karpathy's splits, or your own images and captions (CSV, JSONL, "
                             "Flickr8k/30k, COCO, Karpathy) as a folder `captioner train "
                             "data.root=DIR` reads", [
        "captioner data shapes --out data/shapes",
        "captioner data coco --root data/coco",
        "captioner data import photos/captions.csv --out data/mine",
    ])
    dsub = p.add_subparsers(dest="dataset", required=True, metavar="{shapes,coco,import}")
    s = command(dsub, "shapes", "write the built-in shapes dataset in COCO's formats", [
        "captioner data shapes --out data/shapes",
        "captioner data shapes --out data/big --num-train 20000 --seed 1",
        "captioner data shapes --out data/crowded --max-objects 5",
    ])
    s.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="folder to write (new, empty, or an earlier shapes dataset, whose generated "
                        "files are replaced; nothing else in it is touched)")
    defaults = ShapesConfig()
    count = at_least(1, MAX_IMAGES)
    s.add_argument("--num-train", type=count, default=defaults.num_train, metavar="N",
                   help=f"training images, up to {MAX_IMAGES:,}")
    s.add_argument("--num-val", type=count, default=defaults.num_val, metavar="N",
                   help="validation images")
    s.add_argument("--num-test", type=count, default=defaults.num_test, metavar="N",
                   help="test images")
    s.add_argument("--size", type=at_least(32, MAX_SIZE), default=defaults.size, metavar="PX",
                   help=f"image side in pixels, 32 to {MAX_SIZE}")
    s.add_argument("--seed", type=random_seed, default=defaults.seed, metavar="N",
                   help="the same seed writes the same files")
    s.add_argument("--max-objects", type=_max_objects, default=defaults.max_objects, metavar="N",
                   help="most objects per image, up to 5; captions name every one (train with "
                        "data.max_length=25 eval.max_length=25 above 3)")
    _add_data_coco(dsub)
    _add_data_import(dsub)


def _max_objects(text: str) -> int:
    from captioner.data.shapes import NUMBER_WORDS  # numpy and Pillow: only when it is given

    return at_least(1, max(NUMBER_WORDS))(text)


def _add_data_coco(dsub: argparse._SubParsersAction) -> None:
    from captioner.data.download import ARCHIVE_NAMES, DEFAULT_TIMEOUT_S

    p = command(dsub, "coco", "download and extract COCO 2014 images, annotations and Karpathy's "
                              "split (resumable; each archive's size and SHA-256 checked)", [
        "captioner data coco --root data/coco --dry-run",
        "captioner data coco --root data/coco",
        "captioner data coco --root data/coco --only caption_datasets.zip",
    ], extra="exit status: 0 every archive asked for is complete; 1 one could not be fetched or "
             "verified (one line; rerun to resume); 2 wrong command line; 130 interrupted")
    p.add_argument("--root", type=Path, required=True, metavar="DIR", help="folder to fill")
    p.add_argument("--mirror", type=_http_url, metavar="URL",
                   help="fetch every archive as URL/<archive name> instead")
    p.add_argument("--dry-run", action="store_true",
                   help="list URLs, destinations and disk space; download nothing")
    p.add_argument("--only", nargs="+", choices=ARCHIVE_NAMES, metavar="NAME",
                   help=f"fetch only these archives: {', '.join(ARCHIVE_NAMES)}")
    p.add_argument("--keep-archives", action="store_true",
                   help="keep downloaded zips after extraction (deleted by default to save "
                        "~20 GB; zips you put there yourself are always kept)")
    p.add_argument("--timeout", type=positive_float, default=DEFAULT_TIMEOUT_S, metavar="S",
                   help="seconds to wait for the server before giving up")
    p.add_argument("--checksums", type=Path, metavar="FILE",
                   help="'<archive name> <bytes> <sha256>' lines replacing the pinned sizes and "
                        "sums (for a mirror serving other builds of the archives)")


def _http_url(value: str) -> str:
    from urllib.parse import urlsplit

    # urllib would raise a bare ValueError (a traceback) on anything else.
    if urlsplit(value).scheme not in ("http", "https"):
        raise argparse.ArgumentTypeError(f"not an http(s) URL: {value!r}")
    return value


def _add_data_import(dsub: argparse._SubParsersAction) -> None:
    from captioner.data.importing.detect import FORMATS
    from captioner.data.importing.splits import parse_fractions

    def fractions(text: str) -> tuple[float, float, float]:
        try:
            return parse_fractions(text)
        except CaptionerError as err:  # a bad command line: argparse's message and exit status 2
            raise argparse.ArgumentTypeError(str(err).removeprefix(f"--split {text}: ")) from None

    p = command(dsub, "import", "build a dataset folder that `captioner train data.root=DIR` trains on, "
                                "from a captions file or a dataset folder, and report what was wrong", [
        "captioner data import photos/captions.csv --out data/mine",
        "captioner data import Flickr8k_text/ --images Flicker8k_Dataset --out data/flickr8k",
        "captioner data import data/coco/dataset_flickr30k.json --images flickr30k_images "
        "--out data/flickr30k",
    ], extra="exit status: 0 imported; 3 imported, but rows or images were left out (listed in "
             "DIR/import_report.json); 1 nothing imported (one-line error); 2 wrong command line")
    p.add_argument("source", type=Path, metavar="SOURCE",
                   help="captions file (CSV, TSV, JSONL, Flickr token/CSV, COCO or Karpathy JSON) or "
                        "a folder holding a known dataset's files")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="dataset folder to write: new, empty, or an earlier import's")
    p.add_argument("--images", type=Path, metavar="DIR",
                   help="folder the image names are relative to (default: found beside the captions file)")
    p.add_argument("--format", dest="fmt", choices=FORMATS, default="auto",
                   help="source format (default: auto, from the file names and contents)")
    p.add_argument("--split", type=fractions, default="0.9,0.05,0.05", metavar="TRAIN,VAL,TEST",
                   help="split fractions where the source has no splits (default: 0.9,0.05,0.05)")
    p.add_argument("--seed", type=random_seed, default=0,
                   help="seed of the random split (default: 0)")
    p.add_argument("--copy", action="store_true", help="copy the images into DIR/images "
                                                       "(default: referenced where they are)")
    p.add_argument("--encoding", help="text encoding of the captions file (default: UTF-8, or "
                                      "what its byte-order mark says)")
    p.add_argument("--verify-images", action="store_true",
                   help="decode every image (default: only check that it exists and is not empty)")
    p.add_argument("--allow-outside", action="store_true",
                   help="also take images that lie outside the images folder (names with '..', "
                        "absolute paths, symbolic links leading out); default: such rows are left "
                        "out and reported, so a captions file cannot make --copy take other files")
    p.add_argument("--min-count", type=at_least(1), default=5,
                   help="vocabulary threshold for the report's coverage figure (default: 5)")


def run(args: argparse.Namespace) -> int:
    if args.dataset == "import":
        return _import(args)
    if args.dataset == "coco":
        return _coco(args)
    from captioner.data.shapes import ShapesSpec, check_replaceable, generate_shapes
    from captioner.util.console import say

    spec = ShapesSpec(num_train=args.num_train, num_val=args.num_val, num_test=args.num_test,
                      size=args.size, seed=args.seed, max_objects=args.max_objects)
    check_replaceable(args.out)  # a refusal comes before the line that says it writes
    say(f"writing {args.num_train + args.num_val + args.num_test} shapes images into {args.out}")
    print(generate_shapes(args.out, spec).resolve())
    return 0


def _coco(args: argparse.Namespace) -> int:
    from captioner.data.download import ARCHIVE_NAMES, download_coco, plan

    names = args.only or ARCHIVE_NAMES
    if args.dry_run:
        print(plan(args.root, names, args.mirror))
        return 0
    download_coco(args.root, names, mirror=args.mirror, keep_archives=args.keep_archives,
                  timeout=args.timeout, checksums=args.checksums)
    return 0


def _import(args: argparse.Namespace) -> int:
    from captioner.data.importing import import_dataset
    from captioner.util.console import say

    report = import_dataset(args.source, args.out, images=args.images, fmt=args.fmt,
                            split=args.split, seed=args.seed, copy=args.copy,
                            encoding=args.encoding, verify_images=args.verify_images,
                            min_count=args.min_count, allow_outside=args.allow_outside)
    for problem in report.problems[:5]:
        where = problem.get("line", problem.get("entry"))
        say(f"warning: {problem['file']}:{where}: {problem['message']}")
    if report.problems_total > 5:
        say(f"warning: ... {report.problems_total - 5} more in {args.out / 'import_report.json'}")
    print(report.summary())
    return 3 if report.problems_total else 0
