"""Rank/world helpers for pretraining under torchrun (PyTorch DDP); no scheduler or transport of our own.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; a plain process sees none and runs as rank 0 of 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def reads_host_energy(self) -> bool:
        """One reader per physical host for CPU package / process-time energy (summed across nodes)."""
        return self.local_rank == 0


def detect_world(environ=os.environ) -> World:
    """The torchrun environment, or a single process when it is absent."""
    if "RANK" not in environ or "WORLD_SIZE" not in environ:
        return World()
    return World(int(environ["RANK"]), int(environ["WORLD_SIZE"]), int(environ.get("LOCAL_RANK", 0)))


def under_torchrun(environ=os.environ) -> bool:
    return detect_world(environ).distributed


def init(world: World, device_name: str = "auto") -> torch.device:
    """Join the process group: nccl with cuda:LOCAL_RANK on CUDA, gloo on CPU. Returns this rank's device."""
    use_cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if use_cuda:
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world.distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=world.rank, world_size=world.size)
    return device


def shard_positions(positions: torch.Tensor, world: World) -> torch.Tensor:
    """This rank's share of an epoch's plan (already shuffled identically on every rank).

    Strided like DistributedSampler with drop_last: every rank gets the same number of samples, so
    every rank cuts the same batches and takes the same optimizer steps (a rank with one step more
    would wait forever in its gradient all-reduce). The last len % world planned samples of the
    shuffled plan are not trained this epoch (see untrained_tail); no sample is trained twice.
    """
    if not world.distributed:
        return positions
    even = len(positions) - untrained_tail(len(positions), world)
    return positions[:even][world.rank::world.size]


def untrained_tail(planned: int, world: World) -> int:
    """Planned samples left out of an epoch so that the ranks' shares are equal."""
    return planned % world.size if world.distributed else 0


def sum_across(values: list[float], world: World, device: torch.device | None = None) -> list[float]:
    """All-reduce counters (FLOPs, samples, joules) so every rank holds the world's totals."""
    if not world.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device or torch.device("cpu"))
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def barrier(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.barrier()


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DistributedDataParallel, so checkpoints carry no `module.` prefixes."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
