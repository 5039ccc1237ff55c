"""Time to first caption: `captioner caption one.jpg` from a cold process, next to the floor
that any torchvision program pays, `python -c "import torch, torchvision"`, on the same machine.

The two are timed alternately (so a change in machine load hits both), the median of each is
printed with the gap (target: within 3 s), and one more cold process shows where the gap goes.

    python benchmarks/first_caption.py [CHECKPOINT] [--repeats 3] [--device cpu]

CHECKPOINT defaults to the latest run's best checkpoint under ./runs.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import describe  # benchmarks/ is on sys.path when run as a script
from PIL import Image

# Run in a cold process: the stages of `captioner caption`, each timed, printed as name=seconds.
STAGES = """
import sys, time
t = time.perf_counter()
def lap(name):
    global t
    now = time.perf_counter(); print(f"{name}={now - t:.3f}"); t = now
import torch, torchvision; lap("import torch, torchvision")
from captioner.model.inference import Captioner; lap("import captioner.model.inference (the rest)")
c = Captioner.from_checkpoint(sys.argv[1], device=sys.argv[3]); lap("load checkpoint, build model")
c.caption(sys.argv[2]); lap("first caption (preprocess, CNN, beam search)")
"""


def cold(command: list[str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    return seconds


def default_checkpoint() -> Path:
    from captioner.util.runs import latest_checkpoint

    return latest_checkpoint(Path("runs"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, nargs="?", help="default: the latest run's best")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    checkpoint = args.checkpoint or default_checkpoint()

    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "one.jpg"
        Image.new("RGB", (640, 480), (180, 60, 40)).save(image)
        floor_cmd = [sys.executable, "-c", "import torch, torchvision"]
        caption_cmd = [sys.executable, "-m", "captioner", "caption", str(image),
                       "--checkpoint", str(checkpoint), "--device", args.device]
        floor, caption = [], []
        for _ in range(args.repeats):
            floor.append(cold(floor_cmd))
            caption.append(cold(caption_cmd))
        stages = subprocess.run([sys.executable, "-c", STAGES, str(checkpoint), str(image),
                                 args.device], capture_output=True, text=True, check=True).stdout

    size = checkpoint.stat().st_size / 2**20
    print(f"machine: {describe()}")
    print(f"checkpoint: {checkpoint} ({size:.0f} MiB), device {args.device}, "
          f"median of {args.repeats} cold processes each")
    print(f'python -c "import torch, torchvision"  {statistics.median(floor):6.2f} s   '
          f"(runs: {', '.join(f'{s:.2f}' for s in floor)})")
    print(f"captioner caption one.jpg              {statistics.median(caption):6.2f} s   "
          f"(runs: {', '.join(f'{s:.2f}' for s in caption)})")
    gap = statistics.median(caption) - statistics.median(floor)
    print(f"gap: {gap:.2f} s (target <= 3 s)")
    print("where it goes (one more cold process):")
    for line in stages.splitlines():
        name, seconds = line.rsplit("=", 1)
        print(f"  {name:48} {float(seconds):6.2f} s")


if __name__ == "__main__":
    main()
