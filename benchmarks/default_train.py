"""The default `captioner train` from an empty cache: wall time by stage, test scores, (colour, shape) F1.

Runs exactly what a new user runs (`captioner train`, no arguments) in a scratch folder with a
private CAPTIONER_CACHE, so dataset generation, pretraining, feature extraction, decoder training
and the final evaluation are all timed (each stage from its first line on stderr to the next
stage's); then scores the best checkpoint on fresh scenes with benchmarks/shapes_quality.py and,
with --probe, the pretrained encoder's fc7 with benchmarks/pair_probe.py.

    python benchmarks/default_train.py [--keep DIR] [--scenes 2000] [--probe] [overrides...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import describe  # benchmarks/ is on sys.path as a script

HERE = Path(__file__).resolve().parent
# The first stderr line of each stage of `captioner train`, in order.
STAGES = (("start", ""), ("dataset", "generating the built-in shapes dataset"),
          ("pretraining", "pretraining "), ("features", "extracting "), ("decoder", "training "),
          ("evaluation", "evaluating on "))


def timed_train(work: Path, env: dict[str, str], overrides: list[str]) -> dict[str, float]:
    """Run `captioner train`, echoing its stderr; seconds spent in each stage that occurred."""
    marks = {"start": time.perf_counter()}
    process = subprocess.Popen([sys.executable, "-m", "captioner", "train", *overrides], cwd=work,
                               env=env, stderr=subprocess.PIPE, text=True)
    for line in process.stderr:
        sys.stderr.write(line)
        for stage, prefix in STAGES[1:]:
            if stage not in marks and line.startswith(prefix):
                marks[stage] = time.perf_counter()
    if process.wait() != 0:
        raise SystemExit(f"captioner train failed with exit status {process.returncode}")
    marks["end"] = time.perf_counter()
    order = sorted(marks.items(), key=lambda item: item[1])
    return {stage: later - at for (stage, at), (_, later) in zip(order, order[1:])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temp dir)")
    parser.add_argument("--scenes", type=int, default=2000,
                        help="fresh scenes to score (300 gives a standard error of ~0.015 on F1)")
    parser.add_argument("--probe", action="store_true", help="also probe the pretrained encoder's fc7")
    parser.add_argument("overrides", nargs="*", help="config overrides passed to captioner train")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="captioner-default-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, CAPTIONER_CACHE=str(work / "cache"))
    print(f"machine: {describe()}")
    stages = timed_train(work, env, args.overrides)
    print(f"captioner train: {sum(stages.values()):.0f} s wall-clock, load average "
          f"{os.getloadavg()[0]:.2f} at the end")
    print("  by stage: " + ", ".join(f"{stage} {seconds:.0f} s" for stage, seconds in stages.items()))
    run = work / "runs" / (work / "runs" / "LATEST").read_text().strip()
    metrics = json.loads((run / "eval-test" / "metrics.json").read_text())["metrics"]
    print("test: " + "  ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    best = run / "checkpoints" / "best.ckpt"
    subprocess.run([sys.executable, str(HERE / "shapes_quality.py"), "--checkpoint", str(best),
                    "--n", str(args.scenes), "--show", "5"], cwd=work, env=env, check=True)
    if args.probe:
        encoder = next((work / "cache" / "encoders").glob("*/encoder.pth"))
        subprocess.run([sys.executable, str(HERE / "pair_probe.py"), "--encoder", str(encoder)],
                       cwd=work, env=env, check=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
