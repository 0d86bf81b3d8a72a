"""Processes and data order: the same `train` runs in one process or under `torchrun` (DDP).

Under torchrun (WORLD_SIZE > 1 in the environment) `setup_distributed` joins the process group: NCCL when the
device is a GPU, gloo on CPU. Every rank then trains on its own shard of each epoch (DistributedSampler's rule:
one seeded permutation per epoch, rank r takes every world_size-th index), `batch_size` samples per rank per
step; gradients are averaged by DDP, so all ranks hold the same weights. Only rank 0 writes logs and checkpoints.

The data order is a pure function of (seed, epoch, rank, world_size), and `ResumableBatchSampler` can start in
the middle of an epoch: a resumed run sees exactly the batches the interrupted one would have seen.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler, Sampler


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False       # whether `setup_distributed` created the process group

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """"auto" -> cuda:<local_rank> when CUDA is available, else cpu; "cuda" without CUDA is an error."""
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' asked for, but this torch build sees no CUDA GPU (use --device cpu)")
    return torch.device("cuda", local_rank)


def setup_distributed(device: str = "auto") -> DistInfo:
    """Join the torchrun process group when WORLD_SIZE > 1 (NCCL on GPUs, gloo on CPU); else one process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo(device=pick_device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    created = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        created = True
    if dist.get_world_size() != world_size:
        raise RuntimeError(f"WORLD_SIZE={world_size} but the process group holds {dist.get_world_size()} processes")
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev, initialized_here=created)


def teardown_distributed(info: DistInfo) -> None:
    if info.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_true(flag: bool, info: DistInfo) -> bool:
    """Whether `flag` holds on every rank (one tiny all-reduce under DDP), so all ranks take the same branch."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device if info.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item() > 0.5)


def gather_to_main(obj, info: DistInfo) -> list | None:
    """Every rank's `obj` as a list on rank 0 (None elsewhere); [obj] in one process."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size if info.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


class ResumableBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices for one epoch at a time, resumable inside an epoch.

    Epoch e: DistributedSampler's seeded permutation (seed + e) of the dataset, this rank's share (padded so all
    ranks get as many), cut into len // batch_size full batches (one partial batch when the share is smaller than
    a batch, so a tiny dataset still trains). `set_position(e, b)` makes the next iteration yield epoch e from
    batch b on."""

    def __init__(self, dataset_len: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        if dataset_len < 1:
            raise ValueError("the training set holds no windows: too few or too short episodes for the horizon")
        self._sampler = DistributedSampler(range(dataset_len), num_replicas=world_size, rank=rank, shuffle=True,
                                           seed=seed, drop_last=False)
        self.batch_size = batch_size
        self.epoch, self.start_batch = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return max(1, self._sampler.num_samples // self.batch_size)

    def set_position(self, epoch: int, batch: int) -> None:
        self.epoch, self.start_batch = epoch, batch

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch - self.start_batch)

    def __iter__(self):
        self._sampler.set_epoch(self.epoch)
        idx = list(self._sampler)
        for b in range(self.start_batch, self.batches_per_epoch):
            yield idx[b * self.batch_size:(b + 1) * self.batch_size]
