"""Small layers shared by the encoder, the prompt encoder and the mask decoder.

Attribute names (``lin1``, ``layers``, ``weight``/``bias``) follow the official checkpoints'
state-dict keys, so that official weights load unchanged.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from segany.modeling.cpu_linear import linear


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of an NCHW tensor (the conv-net flavour of LayerNorm)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=1, keepdim=True)
        centred = x - mean
        variance = centred.square().mean(dim=1, keepdim=True)
        normalised = centred * torch.rsqrt(variance + self.eps)
        return normalised * self.weight[:, None, None] + self.bias[:, None, None]


class FeedForward(nn.Module):
    """Two linear layers with an activation between: the transformer MLP. ``prepacked`` keeps
    the weights in oneDNN's layout between calls (:mod:`segany.modeling.cpu_linear`), for an MLP
    that runs on a few rows at a time, over and over (the mask decoder's, once per prompt)."""

    def __init__(
        self, dim: int, hidden_dim: int, activation: type[nn.Module] = nn.GELU, prepacked: bool = False
    ) -> None:
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden_dim)
        self.lin2 = nn.Linear(hidden_dim, dim)
        self.act = activation()
        self.prepacked = prepacked

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = linear(x, self.lin1, self.act, prepacked=self.prepacked)
        return linear(hidden, self.lin2, prepacked=self.prepacked)


class MultiLayerPerceptron(nn.Module):
    """A stack of linear layers with ReLU between them (hypernetworks and the IoU head)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        widths = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < last:
                x = F.relu(x)
        return x


class DropPath(nn.Module):
    """Stochastic depth: during training, drop a residual branch for a random subset of samples."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * x.new_empty(shape).bernoulli_(keep).div_(keep)
