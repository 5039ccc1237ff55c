"""Which device and number format a run uses: one answer for training, extraction and evaluation."""

from __future__ import annotations

import os

import torch

from captioner.config import Config


def wants_cuda(accelerator: str) -> bool:
    """Whether a run with this trainer.accelerator computes on CUDA."""
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def fast_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast pays off here: CUDA with bf16, or a CPU with AMX / AVX512-BF16 that
    torch's kernels are allowed to use (ATEN_CPU_CAPABILITY and ONEDNN_MAX_CPU_ISA can cap them
    at AVX2, which is how an AVX2-only machine is reproduced on a newer one)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu" or not cpu_bf16_units():
        return False
    capped = (torch.backends.cpu.get_cpu_capability() in ("DEFAULT", "AVX2")
              or os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper() in _ONEDNN_WITHOUT_BF16)
    return not capped


# oneDNN ISA limits (ONEDNN_MAX_CPU_ISA) below avx512_core_bf16: its bf16 kernels are emulated there.
_ONEDNN_WITHOUT_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE",
                        "AVX512_CORE_VNNI"}


def cpu_bf16_units() -> bool:
    """Whether the CPU has bf16 arithmetic (AMX tiles or AVX512-BF16); False where torch cannot
    tell (these probes are private torch API, absent from some releases)."""
    probes = (getattr(torch.cpu, "_is_amx_tile_supported", None),
              getattr(torch.cpu, "_is_avx512_bf16_supported", None))
    return any(bool(probe()) for probe in probes if probe is not None)


def resolve_precision(config: Config) -> str:
    """trainer.precision, with "auto" meaning bf16 autocast where it is fast, else full fp32."""
    if config.trainer.precision != "auto":
        return config.trainer.precision
    device = torch.device("cuda" if wants_cuda(config.trainer.accelerator) else "cpu")
    return "bf16-mixed" if fast_bf16(device) else "32-true"


def uses_bf16(config: Config) -> bool:
    """Whether this config's CNN runs under bf16 autocast (and so its cached features are bf16's)."""
    return resolve_precision(config) == "bf16-mixed"
