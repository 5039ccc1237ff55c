"""Download and extract COCO 2014 + Karpathy's split: the same as `captioner data coco`.

    python data_scripts/download_coco.py --root data/coco [--mirror URL] [--dry-run] [--only ...]
"""

import sys

from captioner.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["data", "coco", *sys.argv[1:]]))
