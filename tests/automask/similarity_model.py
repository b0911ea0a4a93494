"""A test double for SAM whose masks have real structure: feature similarity to the prompt point.

Seeded random weights give masks that cover most of the image, so NMS, the crop-edge filter
and small-region cleanup would see almost nothing. This model keeps SAM's real (random)
image encoder and post-processing, but its decoder returns, for each point, three masks of
the pixels whose features resemble the point's, gated by distance to the point at three
scales (small / medium / large), with a predicted IoU and sharpness that vary per mask. Both
the official generator and segany's drive the very same model object, so their records must
agree exactly: any difference is a difference in the generators.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

import segany
from segany.modeling import Sam

RADII = (0.12, 0.3, 0.8)  # of the input image side
GAINS = (6.0, 12.0, 30.0)  # logit sharpness: higher gives more stable masks


class PointPromptEncoder(nn.Module):
    """Passes normalised point coordinates through as the 'sparse embedding'."""

    def __init__(self, embed_dim: int, embedding_size: int, image_size: int) -> None:
        super().__init__()
        self.image_size = image_size
        self.embedding_size = embedding_size
        self.embed_dim = embed_dim
        self.image_embedding_size = (embedding_size, embedding_size)
        self.no_mask_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * embedding_size, 4 * embedding_size)

    def get_dense_pe(self) -> torch.Tensor:
        return torch.zeros(1, self.no_mask_embed.embedding_dim, self.embedding_size, self.embedding_size)

    def dense_weights(self) -> tuple[torch.Tensor, ...]:
        return (self.no_mask_embed.weight,)

    def forward(self, points, boxes, masks):
        coords, _ = points
        side = self.embedding_size
        dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(len(coords), -1, side, side)
        return coords.float() / self.image_size, dense


@dataclass
class SimilarityDecoded:
    """The decoder's masks and IoUs, computed up front (the double has no transformer to split off)."""

    low_res: torch.Tensor
    iou_predictions: torch.Tensor

    def select(self, index: torch.Tensor) -> SimilarityDecoded:
        return SimilarityDecoded(self.low_res[index], self.iou_predictions[index])


class SimilarityDecoder(nn.Module):
    """Masks of pixels similar in feature to the prompt point, at three distance scales."""

    def image_side(self, image_embeddings, image_pe, dense_prompt_embeddings):
        return None

    def image_side_weights(self) -> tuple[torch.Tensor, ...]:
        return ()

    def decode(self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, image_side=None,
               multimask_output=True):
        low_res, iou_predictions = self(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, True, image_side
        )
        wanted = slice(None) if multimask_output else slice(0, 1)
        return SimilarityDecoded(low_res[:, wanted], iou_predictions[:, wanted])

    def upscale_masks(self, decoded: SimilarityDecoded, extent=None) -> torch.Tensor:
        return decoded.low_res

    def upscale_window(self, decoded: SimilarityDecoded, rows: range, columns: range):
        return decoded.low_res[..., rows.start : rows.stop, columns.start : columns.stop], (rows.start, columns.start)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        image_side=None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        centres = sparse_prompt_embeddings[:, 0, :]  # B x 2, (x, y) in [0, 1]
        features = F.normalize(image_embeddings[0], dim=0)  # C x h x w
        side = features.shape[-1] * 4
        grid = (centres * 2 - 1)[None, None]  # 1 x 1 x B x 2
        at_points = F.normalize(F.grid_sample(features[None], grid, align_corners=False)[0, :, 0], dim=0)  # C x B
        similarity = torch.einsum("cb,chw->bhw", at_points, features)
        similarity = F.interpolate(similarity[:, None], size=(side, side), mode="bilinear", align_corners=False)[:, 0]
        cells = (torch.arange(side, dtype=torch.float32) + 0.5) / side
        dx = cells[None, None, :] - centres[:, 0, None, None]
        dy = cells[None, :, None] - centres[:, 1, None, None]
        distance = torch.sqrt(dx**2 + dy**2)
        # Ripples make holes and islands near mask borders, for the small-region cleanup.
        ripples = 0.12 * torch.cos(40 * cells)[None, :, None] * torch.cos(50 * cells)[None, None, :]
        masks, scores = [], []
        for radius, gain in zip(RADII, GAINS):
            logits = gain * (similarity - 0.2 + 0.5 * (1 - distance / radius) + ripples)
            masks.append(logits)
            scores.append((logits.abs() > 0.5 * gain).float().mean(dim=(-1, -2)))
        low_res = torch.stack(masks, dim=1)
        iou = torch.stack(scores, dim=1)
        if not multimask_output:
            return low_res[:, :1], iou[:, :1]
        return low_res, iou


def similarity_sam(seed: int = 0) -> Sam:
    """The tiny config's (seeded random) encoder with the similarity prompt encoder and decoder."""
    torch.manual_seed(seed)
    sam = segany.build_sam("tiny")
    config = sam.config
    sam.prompt_encoder = PointPromptEncoder(config.prompt_embed_dim, config.embedding_size, config.image_size)
    sam.mask_decoder = SimilarityDecoder()
    return sam.eval()
