"""Where the default run's time goes: achieved GFLOP/s of each compute stage against the CPU's peak.

Side by side in one process, at the default config's sizes (or the overrides given):

- peak: a large matrix product (2048^3) in fp32, and in bf16 where the CPU has bf16 units; the
  practical ceiling of this CPU with these kernels;
- pretraining step: the VGG's conv stack forward + backward + Adam at pretrain.batch_size, in the
  precision the run would choose (FLOPs counted per layer from the real layers' shapes);
- extraction: the encoder's forward at eval.batch_size, as `captioner extract` runs it;
- decoder step: one teacher-forced LSTM/GRU step, forward + backward + Adam, at the training
  batch (data.batch_size x data.captions_per_image captions) of the shapes' length mix.

The share of each training step spent on data loading, the optimiser, validation and checkpoint
writes comes from a real run: `python benchmarks/default_train.py trainer.profile=true` prints it.

    python benchmarks/where_time_goes.py [--steps 6] [overrides...]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from machine import describe  # benchmarks/ is on sys.path as a script
from torch import nn
from torch.nn import functional as F

from captioner.config import load_config
from captioner.model.decoder import Decoder
from captioner.model.encoder import build_encoder, encode
from captioner.util.hardware import fast_bf16, resolve_precision

VOCAB, MEAN_WORDS = 40, 11  # the shapes vocabulary and caption length (+ <start>), roughly


def median_seconds(step: Callable[[], object], steps: int) -> float:
    step(), step()  # warm-up: oneDNN builds its kernels on first use
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def conv_flops(encoder: nn.Module, images: torch.Tensor) -> tuple[float, float]:
    """Forward FLOPs of the conv stack and of fc6/fc7 for this batch (multiply-add = 2)."""
    counts = {"conv": 0.0}

    def count(module: nn.Conv2d, args: tuple, out: torch.Tensor) -> None:
        k = module.kernel_size[0] * module.kernel_size[1]
        counts["conv"] += 2.0 * out.numel() * module.in_channels * k / module.groups

    hooks = [m.register_forward_hook(count) for m in encoder.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        grid = encoder.features(images).shape[-2:]
    for hook in hooks:
        hook.remove()
    fc6_inputs = encoder.fc[0].in_features if grid.numel() >= 49 else 512 * grid.numel()
    fc = 2.0 * len(images) * (fc6_inputs * 4096 + 4096 * 4096)
    return counts["conv"], fc


def peak(dtype: torch.dtype, steps: int) -> float:
    a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    return 2 * 2048 ** 3 / median_seconds(lambda: a @ b, steps) / 1e9


def pretrain_step(config, bf16: bool, steps: int) -> tuple[float, float]:
    """Seconds and GFLOP/s of one pretraining step (forward, backward, Adam over the conv stack)."""
    c, p = config.encoder, config.pretrain
    encoder = build_encoder(c.arch, "none").to(memory_format=torch.channels_last)
    encoder.fc.requires_grad_(False).eval()
    head = nn.Linear(4096, 18)
    optimizer = torch.optim.Adam([*encoder.features.parameters(), *head.parameters()], fused=True)
    images = torch.randn(p.batch_size, 3, c.image_size, c.image_size).contiguous(
        memory_format=torch.channels_last)
    targets = (torch.rand(p.batch_size, 18) > 0.85).float()
    conv, fc = conv_flops(encoder, images)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = head(encoder(images).float())
        F.binary_cross_entropy_with_logits(logits, targets).backward()
        optimizer.step()
        optimizer.zero_grad()

    seconds = median_seconds(step, steps)
    # Backward costs twice the forward for the convs (input and weight gradients); fixed fc6/fc7
    # pass their input gradient only (once the forward).
    return seconds, (3 * conv + 2 * fc) / seconds / 1e9


def extraction(config, bf16: bool, steps: int) -> tuple[float, float]:
    c = config.encoder
    encoder = build_encoder(c.arch, "none").eval().to(memory_format=torch.channels_last)
    images = torch.randn(config.eval.batch_size, 3, c.image_size, c.image_size)
    conv, fc = conv_flops(encoder, images)
    seconds = median_seconds(lambda: encode(encoder, images, bf16), steps)
    return seconds, (conv + fc) / seconds / 1e9


def decoder_step(config, bf16: bool, steps: int) -> tuple[float, float]:
    # A training batch: data.batch_size images' worth of captions, each from a different image.
    d, n = config.decoder, config.data.batch_size * config.data.captions_per_image
    decoder = Decoder(VOCAB, cell=d.cell, embed_dim=d.embed_dim, hidden_dim=d.hidden_dim,
                      num_layers=d.num_layers, dropout=d.dropout).train()
    optimizer = torch.optim.Adam(decoder.parameters(), fused=True)
    generator = torch.Generator().manual_seed(0)
    features = torch.relu(torch.randn(n, 4096, generator=generator))
    lengths = torch.randint(MEAN_WORDS - 4, MEAN_WORDS + 5, (n,), generator=generator)
    inputs = torch.randint(1, VOCAB, (n, int(lengths.max())), generator=generator)
    inputs[torch.arange(inputs.shape[1]) >= lengths[:, None]] = 0
    gates = {"lstm": 4, "gru": 3, "rnn": 1}[d.cell]
    tokens, h, e = float(lengths.sum()), d.hidden_dim, d.embed_dim
    per_token = 2 * gates * h * (e + h) * d.num_layers + 2 * h * VOCAB
    init = 2 * 4096 * h * d.num_layers * (2 if d.cell == "lstm" else 1) * n
    flops = 3 * (tokens * per_token + init)  # forward + backward (input and weight gradients)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = decoder(features, inputs)
        F.cross_entropy(logits.float().reshape(-1, VOCAB), inputs.roll(-1, 1).reshape(-1),
                        ignore_index=0).backward()
        optimizer.step()
        optimizer.zero_grad()

    seconds = median_seconds(step, steps)
    return seconds, flops / seconds / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6, help="timed steps of each (after 2 warm-up)")
    parser.add_argument("overrides", nargs="*", help="config overrides, as for captioner train")
    args = parser.parse_args()
    config = load_config(None, args.overrides)
    bf16 = resolve_precision(config) == "bf16-mixed"
    print(f"machine: {describe()}")
    print(f"precision the run chooses: {'bf16-mixed' if bf16 else '32 (fp32)'}")
    fp32_peak = peak(torch.float32, args.steps)
    line = f"peak (2048^3 matrix product): fp32 {fp32_peak:.0f} GFLOP/s"
    bf16_peak = peak(torch.bfloat16, args.steps) if fast_bf16(torch.device("cpu")) else None
    if bf16_peak is not None:
        line += f", bf16 {bf16_peak:.0f} GFLOP/s"
    print(line)
    top = bf16_peak if bf16 and bf16_peak else fp32_peak
    c = config.encoder
    rows = [(f"pretraining step ({c.arch}, {c.image_size}px, batch {config.pretrain.batch_size})",
             pretrain_step(config, bf16, args.steps), config.pretrain.batch_size),
            (f"extraction ({c.image_size}px, batch {config.eval.batch_size})",
             extraction(config, bf16, args.steps), config.eval.batch_size),
            (f"decoder step ({config.decoder.cell} {config.decoder.hidden_dim}, "
             f"{config.data.batch_size * config.data.captions_per_image} captions)",
             decoder_step(config, bf16, args.steps), config.data.batch_size * config.data.captions_per_image)]
    for name, (seconds, rate), batch in rows:
        print(f"  {name}: {seconds * 1000:.0f} ms ({batch / seconds:.0f} items/s), {rate:.0f} GFLOP/s "
              f"= {rate / top:.0%} of the {'bf16' if top is bf16_peak else 'fp32'} peak")


if __name__ == "__main__":
    main()
