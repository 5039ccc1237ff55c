"""Launch facts and the device: one reading of torchrun's, srun's and Lightning's environment,
and one resolution of a device name, for every stage."""

from __future__ import annotations

import pytest
import torch

from captioner.config import load_config
from captioner.errors import CaptionerError
from captioner.util.hardware import resolve_device, resolve_precision, training_device
from captioner.util.launch import Launch, launch

LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "SLURM_NTASKS",
                    "SLURM_LOCALID")


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch):
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)

    def set_to(env: dict[str, str]) -> None:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
    return set_to


@pytest.mark.parametrize(("env", "rank"), [
    ({}, 0), ({"RANK": "3"}, 3), ({"SLURM_PROCID": "5"}, 5), ({"LOCAL_RANK": "1"}, 1),
    ({"NODE_RANK": "1", "LOCAL_RANK": "0"}, 1), ({"RANK": "0", "LOCAL_RANK": "0", "NODE_RANK": "2"}, 0),
])
def test_global_rank_reads_every_launcher(env: dict[str, str], rank: int, environment) -> None:
    environment(env)
    assert launch().rank == rank


@pytest.mark.parametrize(("env", "facts"), [
    ({}, Launch(0, 1, 0)),  # started by hand, or Lightning's rank 0 before it starts the others
    # torchrun, second node of two with four GPUs each
    ({"RANK": "6", "WORLD_SIZE": "8", "LOCAL_RANK": "2", "NODE_RANK": "1"}, Launch(6, 8, 2)),
    # srun: one task per GPU
    ({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1"}, Launch(5, 8, 1)),
    # torchrun inside an srun allocation: torchrun's own numbering wins
    ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "SLURM_PROCID": "0", "SLURM_NTASKS": "1",
      "SLURM_LOCALID": "0"}, Launch(1, 2, 1)),
    # a process Lightning's launcher started: NODE_RANK, LOCAL_RANK and WORLD_SIZE, no RANK
    ({"NODE_RANK": "0", "LOCAL_RANK": "3", "WORLD_SIZE": "4"}, Launch(3, 4, 3)),
    # a rank with no world size announced still lies inside its world
    ({"RANK": "3"}, Launch(3, 4, 0)),
    # what is not a number is not read
    ({"RANK": "", "NODE_RANK": "x", "LOCAL_RANK": "1"}, Launch(1, 2, 1)),
])
def test_launch_facts_of_torchrun_slurm_and_lightning(env: dict[str, str], facts: Launch,
                                                      environment) -> None:
    environment(env)
    assert launch() == facts


def test_one_device_resolution_for_every_name() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(CaptionerError, match="use cpu, cuda, cuda:N or auto"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        for name in ("cuda", "gpu", "cuda:1"):
            with pytest.raises(CaptionerError, match=f"device '{name}': CUDA is not available"):
                resolve_device(name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_process_trains_on_its_own_gpu(environment) -> None:
    environment({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "3"})
    config = load_config(None, ["trainer.accelerator=gpu"])
    assert training_device(config) == torch.device("cuda", 3 % torch.cuda.device_count())
    assert resolve_device("cuda") == torch.device("cuda")  # captioning: the current GPU


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")
def test_training_on_a_gpu_this_machine_lacks(environment) -> None:
    config = load_config(None, ["trainer.accelerator=gpu"])
    with pytest.raises(CaptionerError, match="trainer.accelerator=gpu: .*CUDA is not available"):
        training_device(config)
    # Evaluating such a run's checkpoint here still decides a precision: fp32, as before.
    assert resolve_precision(config) == "32-true"
