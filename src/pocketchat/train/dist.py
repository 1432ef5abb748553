"""Distributed training on PyTorch's own engine: `torchrun` sets the env, we init the group and wrap the model.

One process is the degenerate case (rank 0 of 1), so every stage runs the same code either way.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from pocketchat.hardware import resolve_device


@dataclass
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str = "auto") -> DistInfo:
    """Join the process group if launched by torchrun (gloo on CPU, NCCL on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, local_rank, world, dev)


def wrap(model: nn.Module, info: DistInfo, fsdp: bool) -> nn.Module:
    """Replicate with DDP, or shard each block and then the root with FSDP2 (`fully_shard`)."""
    if info.world_size == 1:
        return model
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        for block in model.model.layers:
            fully_shard(block)
        fully_shard(model)
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[info.device.index] if info.device.type == "cuda" else None)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def sum_across_ranks(values: list[float]) -> list[float]:
    """Each value's sum over the ranks (one all-reduce); the values themselves in one process."""
    if not dist.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return t.tolist()


def mean_across_ranks(values: list[float]) -> list[float]:
    return [v / (dist.get_world_size() if dist.is_initialized() else 1) for v in sum_across_ranks(values)]


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Every rank's x (the same shape on each) concatenated along dim 0 in rank order; x in one process."""
    if not dist.is_initialized():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def gather_lists(items: list) -> list:
    """Every rank's list of picklable items, concatenated in rank order; items in one process."""
    if not dist.is_initialized():
        return items
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]


def broadcast(obj):
    """Rank 0's obj on every rank (picklable); obj in one process."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def teardown() -> None:
    if dist.is_initialized():
        # A DDP wrapper sits in a reference cycle, so only the garbage collector frees it, and its reducer aborts
        # the process if it outlives the group: collect the wrappers the caller dropped while the group exists.
        gc.collect()
        dist.destroy_process_group()
