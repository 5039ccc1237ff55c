"""Batched beam search against the per-image, per-hypothesis loop most captioners use.

im2txt, neuraltalk2 and the popular tutorials decode one image at a time and step each
hypothesis on its own, keeping beams in Python lists. captioner.model.search.beam_search advances
all images and beams as one batch. Both run here on the same random COCO-sized decoder and
the same features, with the same search rules, so the captions should agree; with random
weights a near-tie may still round differently in a batched matmul, hence a match fraction.

    python benchmarks/beam_speed.py [--vocab 10000] [--images 256] [--beam 3] [--max-length 16]

(with the package installed, or PYTHONPATH=. from a source checkout)
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

import torch
from machine import describe  # benchmarks/ is on sys.path as a script
from torch import Tensor

from captioner.model.decoder import Decoder, State
from captioner.model.search import beam_search

PAD, BOS, EOS = 0, 1, 2


@dataclass(frozen=True)
class Beam:
    words: tuple[int, ...]
    logprob: Tensor  # 0-d float32, summed as the batched search sums
    state: State


def naive_beam_search(
    decoder: Decoder, features: Tensor, *, beam_size: int, max_length: int
) -> list[tuple[int, ...]]:
    """The best caption of each image, one image and one hypothesis at a time. The rules are
    beam_search's with n_best=1: keep the 2k best extensions, those ending among the first k
    are finished, the k best others live on, stop once no live beam beats the best finished."""
    captions = []
    for feature in features:
        live = [Beam((), torch.zeros(()), decoder.initial_state(feature[None]))]
        best: Beam | None = None
        for _ in range(max_length):
            candidates = []
            for rank, beam in enumerate(live):
                last = beam.words[-1] if beam.words else BOS
                log_probs, state = decoder.step(torch.tensor([last]), beam.state)
                log_probs[0, [PAD, BOS]] = float("-inf")
                values, words = (beam.logprob + log_probs[0]).topk(2 * beam_size)
                for value, word in zip(values, words.tolist(), strict=True):
                    candidates.append((value.item(), rank, word, value, beam, state))
            candidates = sorted(candidates, key=lambda c: (-c[0], c[1], c[2]))[: 2 * beam_size]
            for score, _, word, value, beam, _ in candidates[:beam_size]:
                if word == EOS and (best is None or score > best.logprob.item()):
                    best = Beam(beam.words, value, beam.state)
            live = [Beam((*beam.words, word), value, state)
                    for _, _, word, value, beam, state in candidates if word != EOS][:beam_size]
            if best is not None and live[0].logprob <= best.logprob:
                break
        captions.append(best.words if best is not None else live[0].words)
    return captions


def batched(decoder: Decoder, features: Tensor, *, beam_size: int, max_length: int):
    found = beam_search(decoder.step, decoder.initial_state(features), bos=BOS, eos=EOS,
                        beam_size=beam_size, max_length=max_length, banned=(PAD, BOS))
    return [hypotheses[0] for hypotheses in found]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=10_000, help="vocabulary size (COCO: ~10k)")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--beam", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=16)
    args = parser.parse_args()

    torch.manual_seed(0)
    decoder = Decoder(args.vocab, cell="lstm", embed_dim=512, hidden_dim=512).eval()
    features = torch.randn(args.images, 4096).relu()  # fc7 features are post-ReLU
    settings = dict(beam_size=args.beam, max_length=args.max_length)
    print(f"machine: {describe()}")
    print(f"decoder: lstm, vocab {args.vocab}, embed 512, hidden 512, random weights; "
          f"{args.images} images, beam {args.beam}, max_length {args.max_length}, CPU")

    with torch.inference_mode():
        batched(decoder, features[:4], **settings)  # warm-up: allocator, kernels
        naive_beam_search(decoder, features[:1], **settings)
        start = time.perf_counter()
        fast = batched(decoder, features, **settings)
        fast_s = time.perf_counter() - start
        start = time.perf_counter()
        slow = naive_beam_search(decoder, features, **settings)
        slow_s = time.perf_counter() - start

    same = sum(h.tokens == words for h, words in zip(fast, slow, strict=True)) / len(fast)
    finished = sum(h.finished for h in fast) / len(fast)
    words = sum(len(h.tokens) for h in fast) / len(fast)
    print(f"batched beam search:   {fast_s:7.2f} s  {args.images / fast_s:8.1f} images/s")
    print(f"per-image naive loop:  {slow_s:7.2f} s  {args.images / slow_s:8.1f} images/s")
    print(f"speed-up: {slow_s / fast_s:.1f}x (target >= 5x)")
    print(f"identical captions: {same:.1%}; finished {finished:.0%}, mean {words:.1f} words")
    if same < 0.95:
        sys.exit("captions differ beyond float ties: the two searches disagree")


if __name__ == "__main__":
    main()
