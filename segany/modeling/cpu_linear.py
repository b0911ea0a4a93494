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
"""

from __future__ import annotations

import platform

import torch
from torch import nn
from torch.nn import functional as F

from segany.modeling.streams import eager_cpu_inference

# Multiply-adds below which F.linear is faster than oneDNN's call.
MIN_MULTIPLY_ADDS = 2**21


def _onednn_available() -> bool:
    """oneDNN's fused linear op is there, on an x86 CPU (where it was measured faster than MKL)."""
    on_x86 = platform.machine().lower() in ("x86_64", "amd64")
    return on_x86 and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


ONEDNN = _onednn_available()


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
) -> torch.Tensor:
    """``activation(layer(x))`` (no activation when None), through oneDNN where it is faster;
    GELU and ReLU run fused into the product.

    ``layer`` is an ``nn.Linear`` or its (weight, bias), in ``nn.Linear``'s layout; any other
    module (a speed mode's int8 layer) runs as it is."""
    if isinstance(layer, nn.Module) and not isinstance(layer, nn.Linear):
        return _activate(layer(x), activation)
    weight, bias = (layer.weight, layer.bias) if isinstance(layer, nn.Linear) else layer
    if not _takes_onednn(x, weight):
        return _activate(F.linear(x, weight, bias), activation)
    fused = _fused_activation(activation)
    name, algorithm = ("none", "") if fused is None else fused
    out = torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, bias, name, [], algorithm)
    return out if fused is not None else activation(out)


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
