"""Which device and number format a run uses: one answer for training, extraction and evaluation."""

from __future__ import annotations

import torch

from captioner.config import Config


def wants_cuda(accelerator: str) -> bool:
    """Whether a run with this trainer.accelerator computes on CUDA."""
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def fast_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast pays off here: CUDA with bf16, or a CPU with AMX / AVX512-BF16."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    return False


def resolve_precision(config: Config) -> str:
    """trainer.precision, with "auto" meaning bf16 autocast where it is fast, else full fp32."""
    if config.trainer.precision != "auto":
        return config.trainer.precision
    device = torch.device("cuda" if wants_cuda(config.trainer.accelerator) else "cpu")
    return "bf16-mixed" if fast_bf16(device) else "32-true"


def uses_bf16(config: Config) -> bool:
    """Whether this config's CNN runs under bf16 autocast (and so its cached features are bf16's)."""
    return resolve_precision(config) == "bf16-mixed"
