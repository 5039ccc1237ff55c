"""What a self-critical step costs against a cross-entropy step, on the default decoder.

Both steps on the same 32 images of cached-size fc7 features (random vectors) and a 30-word
vocabulary: cross-entropy on 5 captions per image (a default training step: 160 captions), SCST
with 5 samples per image, a greedy baseline and the CIDEr-D reward. An epoch of either has the
same number of steps on shapes (3,000 images: 94 steps of 32 images or of 160 captions), so the
ratio of step times is the ratio of epoch times, without validation.

    python benchmarks/self_critical_cost.py [--steps 20] [--baseline greedy|mean]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from captioner.config import load_config, to_dict
from captioner.data.vocab import SPECIALS
from captioner.evaluation.cider_reward import CaptionRewards
from captioner.training.module import caption_loss
from captioner.training.self_critical import SelfCriticalModule, policy_gradient_loss

WORDS = [f"w{i}" for i in range(30)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--baseline", default="greedy")
    args = parser.parse_args()
    rng = random.Random(0)
    references = {i: [[rng.choice(WORDS) for _ in range(rng.randint(6, 12))] for _ in range(5)]
                  for i in range(3000)}
    vocab = [*SPECIALS, *WORDS]
    config = load_config(None, [f"scst.baseline={args.baseline}"])
    module = SelfCriticalModule(to_dict(config), vocab)
    module.rewards = CaptionRewards(references, vocab)
    decoder = module.model.decoder
    optimiser = torch.optim.Adam(decoder.parameters(), lr=1e-4)
    features, ids = torch.randn(32, 4096), torch.arange(32)
    captions = torch.randint(4, len(vocab), (32, 5, 13))
    captions[:, :, 0], captions[:, :, -1] = module.vocab.start, module.vocab.end

    def cross_entropy() -> None:
        decoder.train()
        loss = caption_loss(module.model, features, captions, module.vocab.pad)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

    def self_critical() -> None:
        decoder.eval()
        episode = module.episode(features, ids)
        logits = module.model(features, episode.inputs, repeats=config.scst.samples)
        loss, _ = policy_gradient_loss(logits, episode.targets, episode.reward - episode.baseline,
                                       module.vocab.pad)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

    times: dict[str, list[float]] = {"cross-entropy": [], "self-critical": []}
    for _ in range(args.steps):  # interleaved, so both see the same machine load
        for name, step in (("cross-entropy", cross_entropy), ("self-critical", self_critical)):
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    print(f"cpu: {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; baseline {args.baseline}, 5 samples per image")
    median = {name: statistics.median(t[2:]) for name, t in times.items()}
    for name, seconds in median.items():
        print(f"{name}: {seconds * 1000:.1f} ms per step (median of {args.steps - 2})")
    print(f"self-critical / cross-entropy: {median['self-critical'] / median['cross-entropy']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
