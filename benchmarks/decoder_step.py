"""One teacher-forced training step of the decoder: the way it was against the way it is.

    before: each caption's copy of fc7 through the init layers, the LSTM over the padding, fp32
    after:  Decoder.forward: one initial state per image, a packed batch, bf16 recurrence (training)

Shapes-default sizes: 32 images x 5 captions, caption lengths drawn like the shapes captions
(mean ~10 of up to 18 steps), embedding 256, LSTM 512, fc7 4096. Median of the timed steps.

    python benchmarks/decoder_step.py [--steps 8]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from machine import describe  # benchmarks/ is on sys.path as a script
from torch.nn import functional as F

from captioner.model.decoder import Decoder
from captioner.util.hardware import fast_bf16

VOCAB, IMAGES, PER_IMAGE = 60, 32, 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="timed steps per way (after 2 warm-up)")
    args = parser.parse_args()
    torch.manual_seed(0)
    decoder = Decoder(VOCAB, cell="lstm", embed_dim=256, hidden_dim=512, dropout=0.3).train()
    optimizer = torch.optim.Adam(decoder.parameters(), lr=1e-4, fused=True)
    features = torch.relu(torch.randn(IMAGES, 4096))
    lengths = torch.randint(4, 19, (IMAGES * PER_IMAGE,))
    inputs = torch.randint(1, VOCAB, (IMAGES * PER_IMAGE, int(lengths.max())))
    inputs[torch.arange(inputs.shape[1]) >= lengths[:, None]] = 0  # pad
    targets = inputs.roll(-1, dims=1)  # any targets will do for timing; pad positions ignored
    bf16 = fast_bf16(torch.device("cpu"))

    def before() -> torch.Tensor:
        state = decoder.initial_state(features.repeat_interleave(PER_IMAGE, dim=0))
        outputs, _ = decoder.rnn(decoder.embed(inputs), state)
        return decoder.out(decoder.dropout(outputs))

    def after() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return decoder(features, inputs, repeats=PER_IMAGE)

    def step(forward) -> float:
        start = time.perf_counter()
        logits = forward()
        loss = F.cross_entropy(logits.float().reshape(-1, VOCAB), targets.reshape(-1), ignore_index=0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return time.perf_counter() - start

    print(f"machine: {describe()}")
    seconds = {}
    for name, forward in (("before", before), ("after", after)):
        times = [step(forward) for _ in range(args.steps + 2)][2:]
        seconds[name] = statistics.median(times)
        print(f"{name:7s} {seconds[name]:.3f} s/step")
    print(f"after / before: {seconds['before'] / seconds['after']:.2f}x faster "
          f"({'bf16' if bf16 else 'fp32: no fast bf16 on this CPU'})")


if __name__ == "__main__":
    main()
