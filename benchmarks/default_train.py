"""The default `captioner train`, from an empty cache: wall time, test BLEU, and (colour, shape) F1.

Runs exactly what a new user runs (`captioner train`, no arguments) in a scratch folder with a
private CAPTIONER_CACHE, so dataset generation, training and the final evaluation are all timed;
then scores the best checkpoint (and the last, when it is another file) on fresh scenes with
benchmarks/shapes_quality.py.

    python benchmarks/default_train.py [--keep DIR] [extra overrides...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temp dir)")
    parser.add_argument("--scenes", type=int, default=2000,
                        help="fresh scenes to score (300 gives a standard error of ~0.015 on F1)")
    parser.add_argument("overrides", nargs="*", help="config overrides passed to captioner train")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="captioner-default-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, CAPTIONER_CACHE=str(work / "cache"))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f} at start")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "captioner", "train", *args.overrides], cwd=work, env=env,
                   check=True)
    wall = time.perf_counter() - start
    run = work / "runs" / (work / "runs" / "LATEST").read_text().strip()
    metrics = json.loads((run / "eval-test" / "metrics.json").read_text())["metrics"]
    print(f"captioner train: {wall:.0f} s wall-clock (dataset generation, training, evaluation), "
          f"load average {os.getloadavg()[0]:.2f} at end")
    print("test: " + "  ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    best, last = run / "checkpoints" / "best.ckpt", run / "checkpoints" / "last.ckpt"
    for checkpoint in (best, last) if last.resolve() != best.resolve() else (best,):
        subprocess.run([sys.executable, str(HERE / "shapes_quality.py"), "--checkpoint", str(checkpoint),
                        "--n", str(args.scenes), "--show", "5" if checkpoint == best else "0"],
                       cwd=work, env=env, check=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
