"""Parallel CPU streams: one prompt's work split across the cores in Python threads.

A prompt is ~100 PyTorch operations over 4,096 image tokens, most of them small. On two
PyTorch threads each operation pays to hand half of itself to the other core and to wait for
it: on the 2-core VM a predictor's prompt ran only 1.28x faster on two threads than on one,
while two prompts at once, one thread each, went 1.76x faster. Within a prompt the work on the
image tokens is per token but for a softmax, so it can be cut into ranges that each run whole
on one core (a stream: a Python thread running PyTorch, whose kernels release the GIL; the
calling thread takes the first range). What stays serial (the ~7 tokens' own work) and each
handoff between threads (~0.1 ms on the VM) keep the gain on a predictor's prompt to ~5%
there, most of it from resizing the masks on both cores (docs/speed.md). The automatic
generator's prompt batches, each a whole decoding, go one per stream (:func:`map_in_streams`).

PyTorch's thread count is per thread on the CPU: a caller that runs work in streams keeps
only its share of the threads (:func:`cpu_streams`; one on a 2-core machine), and each stream
takes the caller's count. That matters beyond the share: PyTorch's idle workers spin for a
while after each operation, and one spinning on the core a stream needs slows that stream
down by half (the masks' upscaling, 10.9 -> 17.6 ms a prompt, when it followed a transformer
run on two PyTorch threads).
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

import torch
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

# More streams than this gain nothing on a prompt's few thousand image tokens.
MAX_STREAMS = 4

Item = TypeVar("Item")
Result = TypeVar("Result")

_pool: ThreadPoolExecutor | None = None


def _forget_pool() -> None:
    """A forked child has none of its parent's pool threads: it starts its own when needed."""
    global _pool
    _pool = None


os.register_at_fork(after_in_child=_forget_pool)


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """PyTorch's intra-op thread count (the calling thread's) set to ``count`` for the block,
    then restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def capturing_graph() -> bool:
    """Whether PyTorch is recording a graph (ONNX export, tracing, torch.compile) rather than
    running eagerly."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


def eager_cpu_inference(*tensors: torch.Tensor) -> bool:
    """Whether work on ``tensors`` runs eagerly on the CPU outside autograd: what loops over
    chunks and threads need. A captured graph (ONNX export, tracing, torch.compile) would freeze
    the loop and the schedule; GPUs and training keep whole-batch operations."""
    return not capturing_graph() and all(t.device.type == "cpu" and not t.requires_grad for t in tensors)


def stream_count(*tensors: torch.Tensor) -> int:
    """How many streams work on ``tensors`` should run in: PyTorch's thread count (at most
    :data:`MAX_STREAMS`) for :func:`eager_cpu_inference`, else 1; 1 also under a dispatch mode
    such as a FLOP counter, which sees only its own thread's operations."""
    if not eager_cpu_inference(*tensors) or is_in_torch_dispatch_mode():
        return 1
    return min(MAX_STREAMS, torch.get_num_threads())


@contextmanager
def cpu_streams(*tensors: torch.Tensor, tasks: int | None = None) -> Iterator[int]:
    """The :func:`stream_count` for work on ``tensors`` (at most ``tasks``, the pieces of work
    there are to share); with several, the calling thread (the first stream) keeps only its
    share of PyTorch's threads for the block, as each stream does."""
    count = stream_count(*tensors)
    if tasks is not None:
        count = max(1, min(count, tasks))
    with torch_threads(max(1, torch.get_num_threads() // count)):
        yield count


def in_streams(tasks: Sequence[Callable[[], Result]]) -> list[Result]:
    """The tasks' results, in order: the first task runs on the calling thread, the others on
    the shared pool's threads, each with the calling thread's PyTorch thread count and grad and
    inference modes (all three are per thread)."""
    if len(tasks) == 1:
        return [tasks[0]()]
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="segany-stream")
    threads, grad, inference = torch.get_num_threads(), torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    def in_stream(task: Callable[[], Result]) -> Result:
        with torch.inference_mode(inference), torch.set_grad_enabled(grad), torch_threads(threads):
            return task()

    others = [_pool.submit(in_stream, task) for task in tasks[1:]]
    first = tasks[0]()
    return [first, *(other.result() for other in others)]


def map_in_streams(work: Callable[[Item], Result], items: Sequence[Item], streams: int) -> list[Result]:
    """``[work(item) for item in items]``, in order, run by ``streams`` streams (:func:`in_streams`)
    that each take the next item none has taken yet: items of uneven cost keep every stream busy.
    Once an item raises (or the caller is interrupted), no stream takes another."""
    results: list[Result | None] = [None] * len(items)
    order = itertools.count()  # a shared counter: next() on it is atomic under the GIL
    failed = threading.Event()

    def take_items() -> None:
        try:
            while not failed.is_set() and (index := next(order)) < len(items):
                results[index] = work(items[index])
        except BaseException:
            failed.set()
            raise

    in_streams([take_items] * max(1, min(streams, len(items))))
    return results


def split_range(length: int, parts: int, step: int = 1) -> list[range]:
    """``range(length)`` cut into up to ``parts`` contiguous, near-equal ranges whose bounds are
    multiples of ``step`` (the last bound excepted); no range is empty."""
    units = -(-length // step)
    parts = max(1, min(parts, units))
    bounds = [min(length, step * (units * index // parts)) for index in range(parts + 1)]
    return [range(start, stop) for start, stop in zip(bounds[:-1], bounds[1:])]
