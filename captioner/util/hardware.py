"""Which device and number format a run uses: one answer for training, extraction and evaluation."""

from __future__ import annotations

import os

import torch

from captioner.config import Config
from captioner.errors import CaptionerError
from captioner.util.launch import launch


def resolve_device(device: str | torch.device = "auto", *, local_rank: int | None = None) -> torch.device:
    """The device a name means, checked to exist here: "auto" (CUDA when there is one), "cpu",
    "cuda" (or trainer.accelerator's "gpu") or "cuda:N". With `local_rank` (a process of a
    distributed run) an unnumbered GPU is that process's own: local_rank modulo the GPUs."""
    name = str(device)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device("cuda" if name == "gpu" else name)
    except (RuntimeError, ValueError):
        resolved = None
    if resolved is None or resolved.type not in ("cpu", "cuda"):
        raise CaptionerError(f"device {name!r}: use cpu, cuda, cuda:N or auto")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise CaptionerError(f"device {name!r}: CUDA is not available on this machine")
    if resolved.type == "cuda" and (resolved.index or 0) >= torch.cuda.device_count():
        raise CaptionerError(f"device {name!r}: this machine has {torch.cuda.device_count()} GPUs")
    if resolved.type == "cuda" and resolved.index is None and local_rank is not None:
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return resolved


def training_device(config: Config) -> torch.device:
    """The device this process trains and extracts features on (trainer.accelerator): its own
    GPU (by its local rank) if training uses GPUs, else the CPU."""
    accelerator = config.trainer.accelerator
    try:
        return resolve_device(accelerator, local_rank=launch().local_rank)
    except CaptionerError as err:
        raise CaptionerError(f"trainer.accelerator={accelerator}: {err}") from None


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
    try:
        device = training_device(config)
    except CaptionerError:  # not on this machine: training says so; evaluating here reads fp32
        return "32-true"
    return "bf16-mixed" if fast_bf16(device) else "32-true"


def uses_bf16(config: Config) -> bool:
    """Whether this config's CNN runs under bf16 autocast (and so its cached features are bf16's)."""
    return resolve_precision(config) == "bf16-mixed"
