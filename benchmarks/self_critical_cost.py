"""What a self-critical step costs against a cross-entropy step, on the default decoder.

Both steps on the same 32 images of fc7-sized features (random vectors): cross-entropy on 5
captions of 13 tokens per image (a default training step: 160 captions), SCST with 5 samples per
image, a greedy (or mean) baseline and the CIDEr-D reward against 3,000 images' references. An
epoch of either has the same number of steps on shapes (3,000 images: 94 steps of 32 images or
of 160 captions), so the ratio of step times is the ratio of epoch times, without validation.

An untrained decoder rarely emits <end>, so its samples run to max_length (20 words), longer
than real captions; `--checkpoint CKPT` takes a trained model's decoder and vocabulary instead,
whose samples have their real lengths. `--against COMMIT` also times the self-critical step of
captioner/training/self_critical.py as it was at that commit (read with `git show`), on its own
copy of the same weights, interleaved with the others so that all see the same machine load.

    python benchmarks/self_critical_cost.py [--steps 20] [--baseline greedy|mean]
        [--checkpoint CKPT] [--against COMMIT]
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch

from captioner.config import load_config, to_dict
from captioner.data.vocab import SPECIALS
from captioner.evaluation.cider_reward import CaptionRewards
from captioner.training.module import caption_loss
from captioner.training.self_critical import SelfCriticalModule, policy_gradient_loss

WORDS = [f"w{i}" for i in range(30)]


def module_at(commit: str) -> ModuleType:
    """captioner/training/self_critical.py as it was at `commit`, imported under another name."""
    source = subprocess.run(["git", "show", f"{commit}:captioner/training/self_critical.py"],
                            check=True, capture_output=True, text=True).stdout
    with tempfile.TemporaryDirectory() as folder:  # nothing left behind in /tmp
        path = Path(folder) / f"self_critical_{commit}.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)
    return module


def build(kind: type, overrides: list[str], checkpoint: Path | None) -> tuple[SelfCriticalModule, list[str]]:
    if checkpoint is None:
        vocab = [*SPECIALS, *WORDS]
        return kind(to_dict(load_config(None, overrides)), vocab), WORDS
    from captioner.model.checkpoint import checkpoint_config, load_checkpoint, model_state

    loaded = load_checkpoint(checkpoint)
    config, vocab, _ = checkpoint_config(loaded, checkpoint, overrides)
    module = kind(to_dict(config), vocab.to_list())
    module.model.load_state_dict(model_state(loaded))
    return module, [w for w in vocab.to_list() if w not in SPECIALS]


def self_critical_step(module: SelfCriticalModule, features: torch.Tensor, ids: torch.Tensor,
                       optimiser: torch.optim.Optimizer) -> Callable[[], None]:
    def step() -> None:
        module.model.decoder.eval()
        episode = module.episode(features, ids)
        logits = module.model(features, episode.inputs, repeats=module.config.scst.samples)
        loss, _ = policy_gradient_loss(logits, episode.targets, episode.reward - episode.baseline,
                                       module.vocab.pad)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return step


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--baseline", default="greedy")
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--against", default=None, metavar="COMMIT")
    args = parser.parse_args()
    overrides = [f"scst.baseline={args.baseline}"]
    module, words = build(SelfCriticalModule, overrides, args.checkpoint)
    rng = random.Random(0)
    references = {i: [[rng.choice(words) for _ in range(rng.randint(6, 12))] for _ in range(5)]
                  for i in range(3000)}
    module.rewards = CaptionRewards(references, module.vocab.to_list())
    features, ids = torch.randn(32, 4096), torch.arange(32)
    captions = torch.randint(4, len(module.vocab), (32, 5, 13))
    captions[:, :, 0], captions[:, :, -1] = module.vocab.start, module.vocab.end
    ce_model = copy.deepcopy(module.model)
    ce_optimiser = torch.optim.Adam(ce_model.decoder.parameters(), lr=1e-4)

    def cross_entropy() -> None:
        ce_model.decoder.train()
        loss = caption_loss(ce_model, features, captions, module.vocab.pad)
        ce_optimiser.zero_grad()
        loss.backward()
        ce_optimiser.step()

    steps = {"cross-entropy": cross_entropy}
    if args.against:
        old, _ = build(module_at(args.against).SelfCriticalModule, overrides, args.checkpoint)
        old.model.load_state_dict(module.model.state_dict())
        old.rewards = module.rewards
        steps[f"self-critical at {args.against}"] = self_critical_step(
            old, features, ids, torch.optim.Adam(old.model.decoder.parameters(), lr=1e-4))
    steps["self-critical"] = self_critical_step(
        module, features, ids, torch.optim.Adam(module.model.decoder.parameters(), lr=1e-4))

    # Wall time, and this process's CPU time, which other jobs on a shared machine disturb less.
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in steps}
    for _ in range(args.steps):  # interleaved, so all see the same machine load
        for name, step in steps.items():
            wall, cpu = time.perf_counter(), time.process_time()
            step()
            times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    print(f"cpu: {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}; baseline "
          f"{args.baseline}, 5 samples per image; decoder: {args.checkpoint or 'untrained'}")
    wall = {name: statistics.median(w for w, _ in t[2:]) for name, t in times.items()}
    cpu = {name: statistics.median(c for _, c in t[2:]) for name, t in times.items()}
    for name in steps:
        print(f"{name}: wall {wall[name] * 1000:.0f} ms ({wall[name] / wall['cross-entropy']:.2f}x), "
              f"cpu {cpu[name] * 1000:.0f} ms ({cpu[name] / cpu['cross-entropy']:.2f}x) per step, "
              f"median of {args.steps - 2}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
