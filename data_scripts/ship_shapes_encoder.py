"""Make the shapes encoder the package ships: `captioner pretrain` on the built-in shapes set, packed.

    python data_scripts/ship_shapes_encoder.py                        # the default settings
    python data_scripts/ship_shapes_encoder.py trainer.precision=32   # key=value overrides

It runs `captioner pretrain` with the default config (and any overrides) into a new run folder,
then writes captioner/model/weights/shapes-encoder.pt: the learned convolutions and batch norms
(weights in float16), the recipe's key (every setting the weights depend on; the machine's
precision is recorded, not keyed) and a fingerprint of the fixed fc6/fc7. `captioner train`
takes it in place of pretraining when its own settings give the same key. Rerun this whenever
tests/unit/test_shipped_encoder.py says the recipe changed.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import torch

from captioner import __version__
from captioner.config import load_config
from captioner.model.shipped_encoder import SHIPPED, pack
from captioner.training.pretrain import pretrain, shapes_recipe
from captioner.util.hardware import resolve_precision


def main(overrides: list[str]) -> None:
    config = load_config(None, overrides)
    recipe = shapes_recipe(config)
    if recipe is None:
        sys.exit("ship_shapes_encoder: these settings do not pretrain on the built-in shapes set")
    start = time.perf_counter()
    result = pretrain(None, overrides)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    meta = {"made_by": "captioner pretrain, packed by data_scripts/ship_shapes_encoder.py",
            "captioner_version": __version__, "commit": commit, "torch": str(torch.__version__),
            "cpu": torch.backends.cpu.get_cpu_capability(), "precision": resolve_precision(config),
            "date": time.strftime("%Y-%m-%d"), "seconds": round(time.perf_counter() - start),
            "val_f1": result.f1, "val_exact": result.exact}
    pack(result.weights, recipe, meta, SHIPPED)
    print(f"{SHIPPED}: {SHIPPED.stat().st_size / 1e6:.1f} MB, val F1 {result.f1:.3f}, "
          f"from {result.weights}")


if __name__ == "__main__":
    main(sys.argv[1:])
