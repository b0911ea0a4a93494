"""Prompt encoder: points, box corners and text become sparse tokens, a mask prompt becomes a dense map.

Positions are encoded with random Fourier features (a fixed Gaussian projection, then sin/cos),
the same encoding that gives the image embedding its positional map, so prompts and image
features live in one coordinate system. Text prompts (SAM paper, section 7.5) are CLIP
embeddings, of a text at inference or of an image crop in training, mapped to one token each
by a learned projection that exists only in models configured for it (``text_embed_dim`` > 0),
so the official checkpoints keep exactly their parameters.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from segany.modeling.blocks import LayerNorm2d

PAD_LABEL = -1
NEGATIVE_LABEL = 0
POSITIVE_LABEL = 1


class RandomFourierEncoding(nn.Module):
    """Encode normalised (x, y) positions as sin/cos of a fixed random projection."""

    def __init__(self, num_pos_feats: int, scale: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn(2, num_pos_feats))

    def encode(self, coords: torch.Tensor) -> torch.Tensor:
        """Map coordinates in [0, 1] (..., 2) to features (..., 2 * num_pos_feats)."""
        projected = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix
        projected = 2 * math.pi * projected
        return torch.cat([torch.sin(projected), torch.cos(projected)], dim=-1)

    def grid(self, height: int, width: int) -> torch.Tensor:
        """Encoding of every cell centre of a height x width grid, as C x H x W."""
        device = self.positional_encoding_gaussian_matrix.device
        ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
        xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
        coords = torch.stack([xs[None, :].expand(height, width), ys[:, None].expand(height, width)], dim=-1)
        return self.encode(coords).permute(2, 0, 1)

    def points(self, coords: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """Encoding of pixel-space points (B x N x 2, x then y) inside an image of (H, W)."""
        # x over the width, y over the height. Filled on the device, not built from a list (a copy
        # from the host), so that a CUDA graph can capture it (segany.speed.cuda_graphs).
        size = coords.new_full((2,), image_size[1])
        size[1:].fill_(image_size[0])
        return self.encode((coords / size).float())


class PromptEncoder(nn.Module):
    """Embed points, boxes and mask prompts for the mask decoder."""

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int = 16,
        text_embed_dim: int = 0,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.text_embed_dim = text_embed_dim
        self.image_embedding_size = image_embedding_size
        self.input_image_size = input_image_size
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.pe_layer = RandomFourierEncoding(embed_dim // 2)
        # Learned offsets added to the positional encoding: negative point, positive point,
        # top-left box corner, bottom-right box corner.
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)
        if text_embed_dim > 0:
            self.text_projection = nn.Linear(text_embed_dim, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image embedding grid, 1 x C x H x W."""
        return self.pe_layer.grid(*self.image_embedding_size).unsqueeze(0)

    def dense_weights(self) -> tuple[torch.Tensor, ...]:
        """The tensors that :meth:`get_dense_pe` and the no-mask dense embedding are made of."""
        return self.pe_layer.positional_encoding_gaussian_matrix, self.no_mask_embed.weight

    def embed_points(self, coords: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        """Points (B x N x 2 pixels, labels B x N) to tokens; ``pad`` appends the no-box padding point."""
        coords = coords + 0.5  # pixel centres
        if pad:
            coords = torch.cat([coords, coords.new_zeros(coords.shape[0], 1, 2)], dim=1)
            labels = torch.cat([labels, labels.new_full((labels.shape[0], 1), PAD_LABEL)], dim=1)
        tokens = self.pe_layer.points(coords, self.input_image_size)
        labels = labels[..., None]
        tokens = torch.where(labels == PAD_LABEL, self.not_a_point_embed.weight, tokens)
        tokens = tokens + (labels == NEGATIVE_LABEL) * self.point_embeddings[0].weight
        return tokens + (labels == POSITIVE_LABEL) * self.point_embeddings[1].weight

    def embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """Boxes (B x 4, XYXY pixels) to two corner tokens each."""
        corners = (boxes + 0.5).reshape(-1, 2, 2)
        tokens = self.pe_layer.points(corners, self.input_image_size)
        corner_offsets = torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight], dim=0)
        return tokens + corner_offsets

    def embed_masks(self, masks: torch.Tensor) -> torch.Tensor:
        return self.mask_downscaling(masks)

    def check_text_width(self, width: int) -> None:
        """Raise a ValueError unless this model takes text embeddings ``width`` wide."""
        if self.text_embed_dim == 0:
            raise ValueError(
                "this model takes no text prompts: it has no text projection (text_embed_dim 0); "
                "use a model trained with text prompts (training config text.probability > 0)"
            )
        if width != self.text_embed_dim:
            raise ValueError(
                f"text embedding width mismatch: got {width}, this model takes {self.text_embed_dim}; "
                "use the CLIP model the SAM model was trained with"
            )

    def embed_text(self, text: torch.Tensor) -> torch.Tensor:
        """Text/image embeddings (B x T x D) to T tokens each.

        CLIP aligns its image and text embeddings in direction, not in length, so they are
        L2-normalised before the projection: a crop embedding seen in training and a text
        embedding given at inference then reach the decoder on the same scale.
        """
        if text.ndim != 3:
            raise ValueError(f"text embeddings must be B x T x D, got shape {tuple(text.shape)}")
        self.check_text_width(text.shape[-1])
        weight = self.text_projection.weight
        return self.text_projection(F.normalize(text.to(weight.dtype), dim=-1))

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
        text: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (sparse B x N x C tokens, dense B x C x H x W embedding); ``text`` is B x T x D embeddings."""
        batch = self._batch_size(points, boxes, masks, text)
        weight = self.no_mask_embed.weight
        sparse = [weight.new_empty(batch, 0, self.embed_dim)]
        if points is not None:
            sparse.append(self.embed_points(points[0], points[1], pad=boxes is None))
        if boxes is not None:
            sparse.append(self.embed_boxes(boxes))
        if text is not None:
            sparse.append(self.embed_text(text))
        if masks is not None:
            dense = self.embed_masks(masks)
        else:
            dense = weight.reshape(1, -1, 1, 1).expand(batch, -1, *self.image_embedding_size)
        return torch.cat(sparse, dim=1), dense

    @staticmethod
    def _batch_size(points, boxes, masks, text) -> int:
        if points is not None:
            return points[0].shape[0]
        if boxes is not None:
            return boxes.shape[0]
        if masks is not None:
            return masks.shape[0]
        if text is not None:
            return text.shape[0]
        return 1
