"""What per-word Grad-CAM explanations cost next to the captions they explain.

Side by side, medians of --repeats alternating runs: captioning one image (the one whose
caption is nearest 5 words) against explaining its caption, then 64 images in one batch. Both
read and preprocess the files, as `captioner caption --explain` would. Targets: explaining adds
at most 2x the captioning time for one image and 3x for 64.

Also the two ways of taking one gradient per word: the vmapped backward passes that
captioner.model.explain uses (autograd.grad(is_grads_batched=True), recurrent layer in plain torch
ops, stopping above the max-pool) against T backward passes through one retained graph from A
(oneDNN's recurrent layer), on the same feature maps, with the largest difference between the
Grad-CAM channel weights they give.

    python benchmarks/explain_speed.py --checkpoint runs/shapes/checkpoints/best.ckpt \\
        --images ~/.cache/captioner/shapes/<hash>/images/test [--repeats 5] [--device cpu]

(with the package installed, or PYTHONPATH=. from a source checkout)
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from machine import describe  # benchmarks/ is on sys.path as a script
from torch import Tensor

from captioner.data.images import list_images
from captioner.model.explain import Explainer, teacher_forcing
from captioner.model.inference import Captioner


def seconds(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    return statistics.median(seconds(run) for _ in range(repeats))


def caption_and_explain(captioner: Captioner, paths: list[Path], repeats: int) -> tuple[float, float]:
    """Median seconds to caption `paths` in one batch, and to explain those captions."""
    def caption() -> list:
        return captioner.caption(paths, batch_size=len(paths))

    results = caption()
    captioner.explain(paths, results, batch_size=len(paths))  # warm-up
    caption_s, explain_s = [], []
    for _ in range(repeats):  # alternating, so that load on the machine hits both alike
        caption_s.append(seconds(caption))
        explain_s.append(seconds(lambda: captioner.explain(paths, results, batch_size=len(paths))))
    return statistics.median(caption_s), statistics.median(explain_s)


def looped_channel_weights(explainer: Explainer, acts: Tensor, inputs: Tensor,
                           targets: Tensor) -> Tensor:
    """Explainer.channel_weights' by T backward passes through one retained graph from A (the
    max-pool included), each gradient then averaged over A's grid."""
    decoder, pad = explainer.model.decoder, explainer.vocab.pad
    acts = acts.detach().requires_grad_()
    logits = decoder(explainer.top(explainer.pool(acts)), inputs)
    logprobs = torch.log_softmax(logits.float(), -1).gather(2, targets.unsqueeze(-1))[..., 0]
    logprobs = logprobs * (targets != pad)
    return torch.stack([torch.autograd.grad(logprobs[:, t].sum(), acts, retain_graph=True)[0]
                        for t in range(targets.shape[1])]).mean((-2, -1))


def compare_strategies(captioner: Captioner, paths: list[Path], repeats: int) -> None:
    """Both ways over the captions grouped by length, as Explainer.explain groups them."""
    explainer = captioner.explainer()
    captions = [r.tokens or [] for r in captioner.caption(paths, batch_size=len(paths))]
    acts = explainer.feature_map(torch.stack([captioner.load(p) for p in paths]))
    groups = {}
    for n, words in enumerate(captions):
        groups.setdefault(len(words), []).append(n)
    batches = [(acts[g], *teacher_forcing(captioner.vocab, [captions[n] for n in g],
                                          captioner.device)) for g in groups.values() if g]
    for p in captioner.model.parameters():  # as channel_weights has them: no weight gradients
        p.requires_grad_(False)

    def vmapped() -> list[Tensor]:
        return [explainer.channel_weights(*batch)[0] for batch in batches]

    def looped() -> list[Tensor]:
        return [looped_channel_weights(explainer, *batch) for batch in batches]

    difference = max((a - b).abs().max() for a, b in zip(vmapped(), looped(), strict=True))
    largest = max(a.abs().max() for a in vmapped())
    vmapped_s, looped_s = median_seconds(vmapped, repeats), median_seconds(looped, repeats)
    print(f"per-word gradients, {len(paths)} images in {len(batches)} groups of equal length: "
          f"vmapped {vmapped_s * 1e3:.0f} ms, looped {looped_s * 1e3:.0f} ms "
          f"({looped_s / vmapped_s:.2f}x); max |difference| of the channel weights "
          f"{difference:.2e} (weights up to {largest:.2e})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--images", required=True, type=Path, help="a folder of images")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's own choice); on a machine "
                             "others load, 1 thread avoids stalls at every parallel region")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    captioner = Captioner.from_checkpoint(args.checkpoint, device=args.device)
    paths = list_images(args.images.expanduser()).images[:64]
    lengths = [len(r.tokens or ()) for r in captioner.caption(paths, batch_size=len(paths))]
    one = min(range(len(paths)), key=lambda i: (abs(lengths[i] - 5), i))
    print(f"machine: {describe(args.device)}")
    print(f"checkpoint: {args.checkpoint} ({captioner.config.encoder.arch}, "
          f"{captioner.config.encoder.image_size} px, {captioner.config.decoder.cell}); "
          f"beam 3; medians of {args.repeats}")
    for batch, label in (([paths[one]], f"1 image, {lengths[one]} words"),
                         (paths, f"{len(paths)} images, mean "
                                 f"{statistics.mean(lengths):.1f} words, one batch")):
        caption_s, explain_s = caption_and_explain(captioner, batch, args.repeats)
        target = 2 if len(batch) == 1 else 3
        print(f"{label}: caption {caption_s * 1e3:.0f} ms, explain {explain_s * 1e3:.0f} ms "
              f"= {explain_s / caption_s:.2f}x (target <= {target}x)")
    compare_strategies(captioner, paths, args.repeats)


if __name__ == "__main__":
    main()
