"""Download and extract COCO 2014 + Karpathy's split: see captioner/data/download.py.

    python data_scripts/download_coco.py --root data/coco [--mirror URL] [--dry-run] [--only ...]
"""

import sys
from pathlib import Path

# Run from a source checkout without `pip install -e .`: make the repository root importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from captioner.data.download import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
