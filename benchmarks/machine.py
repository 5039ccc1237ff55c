"""One line describing the machine a benchmark ran on (CPU, bf16 support, GPU, load, versions)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def describe(device: str = "cpu") -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines()
                 if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    from captioner.util.hardware import cpu_bf16_units, fast_bf16

    capped = [f"{name}={os.environ[name]}" for name in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA",
                                                        "MKL_ENABLE_INSTRUCTIONS") if name in os.environ]
    flags = (f"capability {torch.backends.cpu.get_cpu_capability()}, bf16 units {cpu_bf16_units()}, "
             f"fast bf16 {fast_bf16(torch.device('cpu'))}"
             + (f", capped by {' '.join(capped)}" if capped else ""))
    gpu = f"; {torch.cuda.get_device_name(device)}" if str(device).startswith("cuda") else ""
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return (f"{platform.platform()}; {cpu}, {os.cpu_count()} CPUs ({flags}){gpu}{load}; "
            f"Python {platform.python_version()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")
