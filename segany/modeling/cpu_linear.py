"""Linear layers on the CPU through oneDNN, with the activation fused.

PyTorch's CPU ``linear`` runs on MKL's sgemm, which on this project's AMD development VM
reaches ~130 GFLOP/s on two threads where oneDNN's kernels (shipped in every x86 PyTorch
build, the ones ``torch.compile`` uses on the CPU) reach ~170; and a separate GELU or ReLU
is one more pass over the layer's whole output. ViT-B's MLP input layer plus its GELU took
173 ms against 117 ms through oneDNN with the GELU fused, its output layer 146 ms against
93 ms (4096 tokens, two threads). Results agree to float rounding (~3e-6 on unit inputs).

Only eager float32 inference on an x86 CPU takes this path: autograd, graph capture (ONNX
export, tracing, ``torch.compile``), GPUs, other CPUs and builds without oneDNN keep
``F.linear``. So do layers too small to gain: oneDNN's fixed cost per call (~25 us) outweighs
the product below ~2M multiply-adds (a 7 x 256 by 256 x 256 product: 55 us against 29 us).

A weight that many products reuse a few rows at a time (the mask decoder's, once per prompt)
can be kept pre-packed in oneDNN's own layout (``prepacked=True``), instead of being reordered
by every call: the token MLP's two layers, 7 tokens on one thread, 143 + 145 us -> 90 + 87 us;
the upscaling's 256 x 256 layer over 2,752 tokens 3.69 -> 3.31 ms. The results are the same
to the bit.
"""

from __future__ import annotations

import platform
import weakref

import torch
from torch import nn
from torch.nn import functional as F

from segany.modeling.streams import eager_cpu_inference
from segany.modeling.weight_state import weights_state

# Multiply-adds below which F.linear is faster than oneDNN's call.
MIN_MULTIPLY_ADDS = 2**21


def _onednn_available() -> bool:
    """oneDNN's fused linear op is there, on an x86 CPU (where it was measured faster than MKL)."""
    on_x86 = platform.machine().lower() in ("x86_64", "amd64")
    return on_x86 and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


ONEDNN = _onednn_available()

# id(weight) -> (a weak reference to it, its weights_state when packed, the packed copy)
_packed_weights: dict[int, tuple[weakref.ref, tuple, torch.Tensor]] = {}


def _fused_activation(activation: nn.Module | None) -> tuple[str, str] | None:
    """oneDNN's name and algorithm for an activation it can fuse, None if it cannot."""
    if activation is None:
        return "none", ""
    if isinstance(activation, nn.GELU):
        return "gelu", activation.approximate
    if isinstance(activation, nn.ReLU):
        return "relu", ""
    return None


def linear(
    x: torch.Tensor,
    layer: nn.Module | tuple[torch.Tensor, torch.Tensor | None],
    activation: nn.Module | None = None,
    prepacked: bool = False,
) -> torch.Tensor:
    """``activation(layer(x))`` (no activation when None), through oneDNN where it is faster;
    GELU and ReLU run fused into the product.

    ``layer`` is an ``nn.Linear`` or its (weight, bias), in ``nn.Linear``'s layout; any other
    module (a speed mode's int8 layer) runs as it is. ``prepacked`` keeps the weight's oneDNN
    layout for the next calls (see the module's docstring): for long-lived weights only."""
    if isinstance(layer, nn.Module) and not isinstance(layer, nn.Linear):
        return _activate(layer(x), activation)
    weight, bias = (layer.weight, layer.bias) if isinstance(layer, nn.Linear) else layer
    if not _takes_onednn(x, weight):
        return _activate(F.linear(x, weight, bias), activation)
    fused = _fused_activation(activation)
    name, algorithm = ("none", "") if fused is None else fused
    if prepacked:
        weight = _packed(weight, x.numel() // x.shape[-1])
    out = torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, bias, name, [], algorithm)
    return out if fused is not None else activation(out)


def _packed(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """``weight`` in oneDNN's layout for products of ``rows`` rows, packed on first use and again
    whenever the weight changes (:mod:`segany.modeling.weight_state`); the copy goes when the
    weight does. Inference tensors have no version to check, so their copies are not kept."""
    if weight.is_inference():
        return torch.ops.mkldnn._reorder_linear_weight(weight, rows)
    key, state = id(weight), weights_state(weight)
    entry = _packed_weights.get(key)
    if entry is not None and entry[0]() is weight and entry[1] == state:
        return entry[2]
    packed = torch.ops.mkldnn._reorder_linear_weight(weight, rows)
    _packed_weights[key] = (weakref.ref(weight, lambda _: _packed_weights.pop(key, None)), state, packed)
    return packed


def _activate(x: torch.Tensor, activation: nn.Module | None) -> torch.Tensor:
    return x if activation is None else activation(x)


def onednn_inference(x: torch.Tensor) -> bool:
    """Whether products of ``x`` may go through oneDNN: float32 in eager CPU inference, where
    the op is there (the layers' weights are checked by :func:`linear` itself)."""
    return ONEDNN and x.dtype == torch.float32 and eager_cpu_inference(x)


def _takes_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the product of ``x`` and ``weight`` runs faster, and the same, through oneDNN."""
    if not onednn_inference(x) or weight.dtype != torch.float32:
        return False
    if torch.is_grad_enabled() and weight.requires_grad:
        return False
    return x.numel() * weight.shape[0] >= MIN_MULTIPLY_ADDS
