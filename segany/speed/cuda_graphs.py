"""A predictor's prompts on a GPU replayed as CUDA graphs.

On a GPU a prompt is a few hundred small kernels, each launched by the CPU, and the GPU spends
most of a prompt waiting for those launches (a vit_b prompt took ~5 ms on an H200 either way,
official or segany). A CUDA graph records the launches once and replays them in one call.
A graph is fixed to its tensors' shapes and addresses, so :class:`PromptGraphs` keeps one per
kind of prompt (which inputs are given, their shapes, the output flags) for the current image
and weights. A kind is captured the second time it is asked, so that a prompt asked once never
pays for a capture, and every graph is dropped when the image or any decoder weight's storage
changes. Replays give the eager kernels' results: the same kernels run on the same values.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch

Outputs = tuple[torch.Tensor, ...]

# Kinds of prompt kept captured per image; the oldest goes first. Each graph holds its
# outputs (a few masks at the photo's size) and shares one memory pool with the others.
CAPACITY = 8


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: tuple[torch.Tensor | None, ...]  # the graph's own input tensors, refilled before each replay
    outputs: Outputs

    def replay(self, inputs: Sequence[torch.Tensor | None]) -> Outputs:
        for static, given in zip(self.inputs, inputs, strict=True):
            if static is not None:
                static.copy_(given)
        self.graph.replay()
        # The next replay overwrites the graph's outputs: the caller gets its own copies.
        return tuple(output.clone() for output in self.outputs)


class PromptGraphs:
    """CUDA graphs of one predictor's prompt path, keyed by the kind of prompt."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self._graphs: OrderedDict[Hashable, _Captured | None] = OrderedDict()  # None: capture failed
        self._seen: set[Hashable] = set()
        self._state: Hashable = None
        self._pool = None

    def clear(self) -> None:
        """Drop every graph (and with the last one, their memory)."""
        self._graphs.clear()
        self._seen.clear()
        self._pool = None

    def run(
        self,
        kind: Hashable,
        state: Hashable,
        run: Callable[..., Outputs],
        inputs: Sequence[torch.Tensor | None],
    ) -> Outputs:
        """``run(*inputs)``, replayed from a graph when this ``kind`` of prompt was asked before
        in the same ``state`` (the image and weights the graphs read)."""
        if all(tensor is None for tensor in inputs):
            return run(*inputs)
        if state != self._state:
            self.clear()
            self._state = state
        key = (kind, _signature(inputs))
        if key not in self._graphs:
            if key not in self._seen:
                self._seen.add(key)
                return run(*inputs)
            self._graphs[key] = self._capture(run, inputs)
            if len(self._graphs) > self.capacity:
                self._graphs.popitem(last=False)  # the oldest; never the one just captured
        captured = self._graphs[key]
        return run(*inputs) if captured is None else captured.replay(inputs)

    def _capture(self, run: Callable[..., Outputs], inputs: Sequence[torch.Tensor | None]) -> _Captured | None:
        """A graph of ``run`` on copies of ``inputs``, or None (with a warning) where the path
        cannot be captured: such prompts keep running eagerly."""
        static = tuple(None if tensor is None else tensor.clone() for tensor in inputs)
        device = next(tensor.device for tensor in static if tensor is not None)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        try:
            # Lazy initialisation (library handles, workspaces) happens here, outside the capture.
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                run(*static)
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
                outputs = run(*static)
        except RuntimeError as error:
            warnings.warn(f"CUDA graph capture failed, this kind of prompt runs without one: {error}", stacklevel=3)
            torch.cuda.synchronize(device)
            return None
        return _Captured(graph, static, tuple(outputs))


def _signature(inputs: Sequence[torch.Tensor | None]) -> tuple:
    """What a graph is fixed to: each input's shape, dtype and device (None where not given)."""
    return tuple(None if tensor is None else (tuple(tensor.shape), tensor.dtype, tensor.device) for tensor in inputs)


def storage_state(*modules: torch.nn.Module) -> tuple[int, ...]:
    """The addresses of the modules' parameters and buffers: a graph captured on them is valid
    while these stay (in-place updates, e.g. ``load_state_dict``, keep them; moving or
    replacing a tensor does not)."""
    # Walked by hand: parameters() and buffers() took 2.5x as long (261 against 106 us for
    # vit_b's prompt encoder and decoder), and this runs every prompt.
    addresses = []
    for module in modules:
        for part in module.modules():
            for tensors in (part._parameters, part._buffers):
                for tensor in tensors.values():
                    if tensor is not None:
                        addresses.append(tensor.data_ptr())
    return tuple(addresses)
