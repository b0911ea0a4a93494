"""Sharing work across ``torchrun`` processes, on one machine or many.

torchrun starts one process per worker and tells each its place through environment
variables (RANK, WORLD_SIZE, LOCAL_RANK); outside torchrun they are absent and everything
here degrades to a single process. The process group uses NCCL when the workers run on
GPUs and gloo on CPUs.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Iterator, Sequence, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def rank() -> int:
    """This process's index among all workers (0 outside torchrun)."""
    return int(os.environ.get("RANK", 0))


def world_size() -> int:
    """How many workers there are in all (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", 1))


def local_rank() -> int:
    """This process's index among the workers on its machine: which GPU it should use."""
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main_process() -> bool:
    """Whether this process should do the once-only work: summaries, progress bars, merged files."""
    return rank() == 0


def shard(items: Sequence[T], index: int | None = None, count: int | None = None) -> list[T]:
    """This worker's share of ``items``: every ``count``-th item from ``index`` (round robin).

    Round robin spreads costly items (large images, say) evenly when they cluster in the list.
    """
    index = rank() if index is None else index
    count = world_size() if count is None else count
    if not 0 <= index < count:
        raise ValueError(f"shard index must be in [0, {count}), got {index}")
    return list(items[index::count])


def worker_device(device: str) -> str:
    """The device for this worker: a bare "cuda" becomes this machine's GPU number LOCAL_RANK."""
    if device == "cuda" and world_size() > 1:
        return f"cuda:{local_rank()}"
    return device


@contextmanager
def process_group(device: str = "cpu") -> Iterator[None]:
    """Join the torchrun workers' process group for the duration (a no-op for a single process)."""
    if world_size() == 1 or dist.is_initialized():
        yield
        return
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend)
    try:
        yield
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every worker gets here (no-op for a single process)."""
    if dist.is_initialized():
        dist.barrier()


def gather_to_all(value: Any) -> list[Any]:
    """Every worker's ``value`` (picklable), in rank order, on every worker."""
    if not dist.is_initialized():
        return [value]
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values
