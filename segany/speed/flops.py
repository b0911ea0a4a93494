"""Count the floating-point work of a piece of PyTorch code, and this machine's matmul rate.

Speed claims against the official package rest on two numbers per stage: how much arithmetic
each side does, and how fast each side does it. Wall time alone cannot separate them, and on a
noisy machine it moves by a quarter between runs while the arithmetic does not move at all.
:class:`FlopCounter` watches every ATen operation (below ``inference_mode`` too, where
``torch.utils.flop_counter.FlopCounterMode`` sees only ``linear``/``matmul`` and cannot count
them) and adds up matrix products, convolutions and CPU attention; element-wise work is not
counted, as in every FLOP count of a network.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map
from torch.utils.flop_counter import flop_registry


def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_val=None, **kwargs) -> int:
    """CPU flash attention: Q K^T and then the weights times V, 2 FLOPs per multiply-add (called
    as torch's own formulas are, with the output's shape as ``out_val``)."""
    *batch, queries, width = query_shape
    keys, value_width = key_shape[-2], value_shape[-1]
    return 2 * int(torch.Size(batch).numel()) * queries * keys * (width + value_width)


def _onednn_linear_flops(input_shape, weight_shape, *args, out_val=None, **kwargs) -> int:
    """oneDNN's fused linear layer (:mod:`segany.modeling.cpu_linear`): one matrix product."""
    return 2 * int(torch.Size(input_shape).numel()) * weight_shape[0]


_EXTRA_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops}
if hasattr(torch.ops.mkldnn, "_linear_pointwise"):
    _EXTRA_FORMULAS[torch.ops.mkldnn._linear_pointwise] = _onednn_linear_flops


def _shape(value: Any) -> Any:
    return value.shape if isinstance(value, torch.Tensor) else value


class FlopCounter(TorchDispatchMode):
    """``with FlopCounter() as counter: ...`` then ``counter.total`` (FLOPs) and ``counter.by_op``.

    Composite operations (``linear``, ``matmul``, ``einsum``, ``scaled_dot_product_attention``)
    are decomposed into the kernels they run, so each product is counted once, whether the
    code ran under ``inference_mode``, ``no_grad`` or neither.
    """

    def __init__(self) -> None:
        super().__init__()
        self.by_op: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.by_op.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        with self:
            decomposed = func.decompose(*args, **kwargs)
        if decomposed is not NotImplemented:
            return decomposed
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        formula = flop_registry.get(packet) or _EXTRA_FORMULAS.get(packet) or _in_place_formula(packet)
        if formula is not None:
            flops = formula(*tree_map(_shape, args), **tree_map(_shape, kwargs), out_val=tree_map(_shape, out))
            self.by_op[str(packet)] += int(flops)
        return out


def _in_place_formula(packet: Any) -> Any:
    """An in-place product's formula (``baddbmm_``, ``addmm_``): its out-of-place twin's."""
    name = packet.__name__
    if not name.endswith("_") or name.startswith("_"):
        return None
    twin = getattr(torch.ops.aten, name[:-1], None)
    return None if twin is None else flop_registry.get(twin)


def matmul_rate(size: tuple[int, int, int] = (4096, 768, 3072), repeat: int = 10) -> float:
    """This machine's float32 matmul rate (FLOP/s, best of ``repeat``) on an M x K by K x N product
    the size of a ViT-B MLP layer at SAM's 64 x 64 tokens: what the big layers of any SAM run at."""
    rows, inner, columns = size
    left, right = torch.randn(rows, inner), torch.randn(inner, columns)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        left @ right
        best = min(best, time.perf_counter() - start)
    return 2 * rows * inner * columns / best
