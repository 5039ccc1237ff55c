"""The default `captioner train` from an empty cache: wall time by stage, test scores, (colour, shape) F1.

Runs exactly what a new user runs (`captioner train`, no arguments) in a scratch folder with a
private CAPTIONER_CACHE, so dataset generation, pretraining (or unpacking the shipped encoder;
pretrain.shipped=false pretrains), feature extraction, decoder training and the final evaluation
are all timed (each stage from its first line on stderr to the next
stage's), with the precision each stage ran in and the disk the run and the cache take; then
scores the best checkpoint on fresh scenes with benchmarks/shapes_quality.py and, with --probe,
the pretrained encoder's fc7 with benchmarks/pair_probe.py. With the override
trainer.profile=true it also prints where the pretraining's and the decoder's steps spend their
time (Lightning's profiler: data loading, forward, backward, optimiser, validation, checkpoints).

    python benchmarks/default_train.py [--keep DIR] [--scenes 2000] [--probe] [overrides...]

To reproduce a CPU without AVX-512 or bf16 (an AVX2-only one) on a newer CPU, cap torch's
kernels: ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2; the run
then chooses fp32, as it does there.
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
          ("shipped encoder", "using the shapes encoder shipped"), ("pretraining", "pretraining "),
          ("features", "extracting "), ("decoder", "training"),
          ("evaluation", "evaluating on "))


# Lightning profiler actions (logs/fit-profile.txt) behind each share of a training step.
SHARES = {"data loading": ("train_dataloader_next", "val_next", "batch_to_device"),
          "forward": ("training_step",), "backward": ("backward",),
          "validation": ("validation_step", "on_validation_epoch_end"),
          "checkpoint writes": ("RunCheckpoints.on_train_epoch_end",)}


def timed_train(work: Path, env: dict[str, str], overrides: list[str],
                firsts: dict[str, str]) -> dict[str, float]:
    """Run `captioner train`, echoing its stderr; seconds spent in each stage that occurred, and
    (into `firsts`) each stage's first line, which names its precision."""
    marks = {"start": time.perf_counter()}
    process = subprocess.Popen([sys.executable, "-m", "captioner", "train", *overrides], cwd=work,
                               env=env, stderr=subprocess.PIPE, text=True)
    for line in process.stderr:
        sys.stderr.write(line)
        for stage, prefix in STAGES[1:]:
            if stage not in marks and line.startswith(prefix):
                marks[stage] = time.perf_counter()
                firsts[stage] = line.strip()
    if process.wait() != 0:
        raise SystemExit(f"captioner train failed with exit status {process.returncode}")
    marks["end"] = time.perf_counter()
    order = sorted(marks.items(), key=lambda item: item[1])
    return {stage: later - at for (stage, at), (_, later) in zip(order, order[1:])}


def disk_mb(*folders: Path) -> float:
    """Bytes under the folders in MB (10^6), each file once however many hard links name it."""
    seen, total = set(), 0
    for folder in folders:
        for path in folder.rglob("*"):
            stat = path.lstat()
            if path.is_file() and not path.is_symlink() and (stat.st_dev, stat.st_ino) not in seen:
                seen.add((stat.st_dev, stat.st_ino))
                total += stat.st_size
    return total / 1e6


def shares(profile: Path) -> str:
    """Lightning's profile of one fit as shares of its total: data, forward, backward, ..."""
    seconds: dict[str, float] = {}
    for line in profile.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[3].replace(".", "").replace("e-", "").isdigit():
            seconds[cells[0]] = float(cells[3])
    total = seconds.get("Total", 0.0) or 1.0

    def summed(names: tuple[str, ...]) -> float:
        return sum(v for k, v in seconds.items() if any(k.endswith(n) for n in names))

    parts = {name: summed(names) for name, names in SHARES.items()}
    step = summed(("optimizer_step",))
    parts["optimiser (Adam, clipping)"] = max(step - parts["forward"] - parts["backward"], 0.0)
    parts["other"] = max(total - sum(parts.values()), 0.0)
    return f"{total:.0f} s: " + ", ".join(f"{k} {v / total:.0%}" for k, v in parts.items())


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
    firsts: dict[str, str] = {}
    stages = timed_train(work, env, args.overrides, firsts)
    print(f"captioner train: {sum(stages.values()):.0f} s wall-clock, load average "
          f"{os.getloadavg()[0]:.2f} at the end")
    print("  by stage: " + ", ".join(f"{stage} {seconds:.0f} s" for stage, seconds in stages.items()))
    for stage, line in firsts.items():
        print(f"  {stage}: {line[:150]}")
    run = work / "runs" / (work / "runs" / "LATEST").read_text().strip()
    print(f"disk: run folder + cache {disk_mb(work / 'runs', work / 'cache'):.0f} MB "
          f"(cache {disk_mb(work / 'cache'):.0f} MB; largest checkpoint "
          f"{max(p.stat().st_size for p in (run / 'checkpoints').glob('*.ckpt')) / 1e6:.1f} MB)")
    pretraining = next((work / "cache" / "encoders").glob("*/logs/fit-profile.txt"), None)
    for name, profile in [("pretraining", pretraining), ("decoder", run / "logs" / "fit-profile.txt")]:
        if profile is not None and profile.is_file():
            print(f"  {name} fit, share of its time: {shares(profile)}")
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
