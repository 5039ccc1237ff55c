"""Where this process stands in a distributed run, as its launcher announced it.

One reading of the launchers' environment for every stage: the run folder (only global rank 0
claims one), the feature cache (which shards a process takes first) and the training device
(a process's own GPU). It is read before any process group exists, so it is what the launcher
said, not what torch.distributed will later agree on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Launch:
    rank: int  # global rank, across all nodes
    world_size: int  # processes in the run
    local_rank: int  # rank on this node: which of its GPUs this process takes


def launch() -> Launch:
    """This process's launch facts; (0, 1, 0) for a process started by hand.

    torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; srun sets SLURM_PROCID, SLURM_NTASKS and
    SLURM_LOCALID; Lightning's own launcher gives the processes it starts NODE_RANK, LOCAL_RANK
    and WORLD_SIZE but no global rank, so NODE_RANK + LOCAL_RANK stands in for it: exact on the
    first node, and elsewhere still non-zero, which is what deciding who writes needs.
    """
    env = os.environ
    for rank, world, local in (("RANK", "WORLD_SIZE", "LOCAL_RANK"),
                               ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")):
        if env.get(rank, "").isdigit():
            local_rank = _number(env.get(local), _number(env.get("LOCAL_RANK"), 0))
            return _launch(int(env[rank]), _number(env.get(world), 1), local_rank)
    local_rank = _number(env.get("LOCAL_RANK"), 0)
    rank = _number(env.get("NODE_RANK"), 0) + local_rank
    return _launch(rank, _number(env.get("WORLD_SIZE"), 1), local_rank)


def _launch(rank: int, world_size: int, local_rank: int) -> Launch:
    return Launch(rank, max(world_size, rank + 1), local_rank)  # a world that holds this rank


def _number(value: str | None, default: int) -> int:
    return int(value) if value is not None and value.isdigit() else default
