"""Which number format a run picks: bf16 only where the CPU's bf16 units are there and allowed."""

from __future__ import annotations

import types

import pytest
import torch

from captioner.config import load_config
from captioner.util import hardware
from captioner.util.hardware import fast_bf16, resolve_precision


@pytest.fixture
def bf16_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU with AVX512-BF16, whatever this machine has."""
    monkeypatch.setattr(hardware, "cpu_bf16_units", lambda: True)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)


def test_a_bf16_cpu_trains_in_bf16(bf16_cpu: None) -> None:
    assert fast_bf16(torch.device("cpu"))
    assert resolve_precision(load_config(None, ["trainer.accelerator=cpu"])) == "bf16-mixed"


@pytest.mark.parametrize("cap", [{"capability": "AVX2"}, {"capability": "DEFAULT"},
                                 {"isa": "AVX2"}, {"isa": "avx512_core"}])
def test_kernels_capped_below_bf16_train_in_fp32(bf16_cpu: None, monkeypatch: pytest.MonkeyPatch,
                                                 cap: dict[str, str]) -> None:
    # ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA capped at AVX2 (how an AVX2-only CPU is reproduced):
    # bf16 would be emulated there, several times slower than fp32.
    if "capability" in cap:
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: cap["capability"])
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap["isa"])
    assert not fast_bf16(torch.device("cpu"))
    assert resolve_precision(load_config(None, ["trainer.accelerator=cpu"])) == "32-true"


def test_a_cpu_without_bf16_units_trains_in_fp32(bf16_cpu: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardware, "cpu_bf16_units", lambda: False)
    assert not fast_bf16(torch.device("cpu"))


def test_missing_private_probes_mean_no_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    # torch releases without these private helpers: the answer is "no bf16", not an AttributeError.
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    assert hardware.cpu_bf16_units() is False


def test_fp32_captioning_on_cuda_works_on_torch_before_2_9(monkeypatch: pytest.MonkeyPatch) -> None:
    # torch 2.6-2.8, which pyproject allows, have no cudnn.conv.fp32_precision: there
    # cudnn.allow_tf32 is the switch, and captioning in fp32 on CUDA must not raise AttributeError.
    from captioner.model import inference

    monkeypatch.setattr(torch.backends.cudnn, "conv", types.SimpleNamespace(), raising=False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    with inference._ieee_fp32_convs():
        assert torch.backends.cudnn.allow_tf32 is False
    assert torch.backends.cudnn.allow_tf32 is True
