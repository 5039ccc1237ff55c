"""Where a self-critical step's time goes, against a cross-entropy step, as training runs them.

Unlike self_critical_cost.py (random features, everything in fp32), this takes a trained shapes
checkpoint and its cached training features and captions, and runs each step as Lightning does
at `trainer.precision`: the forward under bf16 autocast where that resolves to bf16-mixed, the
backward and Adam outside it. Interleaved on copies of the same decoder and the same batches:

- cross-entropy: 32 images' 5 reference captions (160 items by caption, as training loads them);
- self-critical with the decoder in `eval()`, its recurrent passes in fp32 (the code before the
  self-critical phase moved to training precision);
- self-critical with `train_without_dropout()`, at cross-entropy's precision (the code since).

Each phase's process CPU time (median of the steps after 2 warm-ups): with one thread
(`--threads 1`, the default) it counts the step's own work, which other jobs on a shared
machine disturb far less than wall time.

    python benchmarks/self_critical_phases.py --checkpoint runs/shapes/checkpoints/best.ckpt [--steps 8]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections import defaultdict
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from captioner.config import to_dict
from captioner.data.datamodule import CaptionSet, collate
from captioner.data.prepare import prepare
from captioner.evaluation.cider_reward import CaptionRewards
from captioner.features.extract import split_features
from captioner.model.inference import Captioner
from captioner.training.module import caption_loss
from captioner.training.self_critical import SelfCriticalModule, policy_gradient_loss
from captioner.util.hardware import resolve_precision

TIMES: dict[str, list[float]] = defaultdict(list)


def timed(name: str, since: float) -> float:
    now = time.process_time()
    TIMES[name].append(now - since)
    return now


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    captioner = Captioner.from_checkpoint(args.checkpoint, device="cpu")
    config, vocab = captioner.config, captioner.vocab
    data = prepare(config)
    store = split_features(config, data, captioner.model.encoder, "train", device=torch.device("cpu"))
    records = [r for r in data.split("train") if r.image_id in store.row]
    rewards = CaptionRewards({r.image_id: data.tokens(r) for r in records}, vocab.to_list())
    bf16 = resolve_precision(config) == "bf16-mixed"

    def autocast() -> contextlib.AbstractContextManager:
        return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def batches(by_caption: bool):  # noqa: ANN202
        items = CaptionSet(records, store.of, vocab, config.data.max_length, config.data.captions_per_image,
                           training=True, by_caption=by_caption, tokens=data.tokens)
        return iter(DataLoader(items, batch_size=config.data.batch_size * items.batch_scale, shuffle=True,
                               collate_fn=partial(collate, pad=items.pad),
                               generator=torch.Generator().manual_seed(0)))

    def module() -> tuple[SelfCriticalModule, torch.optim.Optimizer]:
        m = SelfCriticalModule(to_dict(config), vocab.to_list())
        m.model.decoder.load_state_dict(captioner.model.decoder.state_dict())
        m.rewards = rewards
        return m, torch.optim.Adam(m.model.decoder.parameters(), lr=1e-5)

    def finish(name: str, loss: torch.Tensor, optimiser: torch.optim.Optimizer, since: float) -> None:
        optimiser.zero_grad()
        loss.backward()
        since = timed(f"{name}: backward", since)
        optimiser.step()
        timed(f"{name}: adam", since)

    def cross_entropy(m: SelfCriticalModule, optimiser: torch.optim.Optimizer, batch: dict) -> None:
        m.model.decoder.train()
        since = time.process_time()
        with autocast():
            loss = caption_loss(m.model, m.features(batch), batch["captions"], vocab.pad)
        finish("cross-entropy", loss, optimiser, timed("cross-entropy: forward", since))

    def self_critical(name: str, m: SelfCriticalModule, optimiser: torch.optim.Optimizer,
                      batch: dict) -> None:
        if name.endswith("fp32"):
            m.model.decoder.eval()
        else:
            m.model.decoder.train_without_dropout()
        since = time.process_time()
        with autocast():
            features = m.features(batch)
            episode = m.episode(features, batch["image_id"])
            since = timed(f"{name}: rollout and reward", since)
            logits = m.model(features, episode.inputs, repeats=m.config.scst.samples)
            advantage = episode.reward - episode.baseline
            loss, _ = policy_gradient_loss(logits, episode.targets, advantage, vocab.pad)
        finish(name, loss, optimiser, timed(f"{name}: forward", since))

    steps = {"cross-entropy": partial(cross_entropy, *module()),
             "self-critical, fp32": partial(self_critical, "self-critical, fp32", *module()),
             "self-critical, training precision": partial(self_critical, "self-critical, training precision",
                                                          *module())}
    by_caption, by_image = batches(True), batches(False)
    torch.manual_seed(0)
    for _ in range(args.steps):
        since = time.process_time()
        captions = next(by_caption)
        since = timed("loader: 160 captions", since)
        images = next(by_image)
        timed("loader: 32 images", since)
        for name, step in steps.items():
            step(captions if name == "cross-entropy" else images)
    print(f"cpu: {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}; "
          f"{'bf16 autocast' if bf16 else 'fp32'}; {args.checkpoint}")
    median = {name: statistics.median(t[2:]) for name, t in TIMES.items()}
    for name, seconds in median.items():
        print(f"  {name:50s} {seconds * 1000:7.1f} ms")
    totals = {kind: sum(s for name, s in median.items() if name.startswith(f"{kind}:")) for kind in steps}
    for kind, seconds in totals.items():
        print(f"{kind:52s} {seconds * 1000:7.1f} ms ({seconds / totals['cross-entropy']:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
