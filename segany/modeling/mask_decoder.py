"""Mask decoder: output tokens read the prompted image, then hypernetworks turn them into masks.

One IoU token and four mask tokens are prepended to the prompt tokens. After the two-way
transformer, each mask token's MLP produces the weights of a dynamic linear classifier over
the 4x-upscaled image features; the IoU token predicts each mask's quality. Token 0's mask
is the single-mask answer, tokens 1-3 the three ambiguity-aware answers.
"""

from __future__ import annotations

import torch
from torch import nn

from segany.modeling.blocks import LayerNorm2d, MultiLayerPerceptron
from segany.modeling.transformer import ImageSide, TwoWayTransformer


class MaskDecoder(nn.Module):
    def __init__(
        self,
        transformer_dim: int,
        transformer: TwoWayTransformer,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MultiLayerPerceptron(transformer_dim, transformer_dim, transformer_dim // 8, 3)
            for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MultiLayerPerceptron(
            transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth
        )

    def image_side(
        self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, dense_prompt_embeddings: torch.Tensor
    ) -> ImageSide:
        """Prompt-independent work for one image and dense prompt, reusable across sparse prompts."""
        return self.transformer.image_side(image_embeddings + dense_prompt_embeddings, image_pe)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        image_side: ImageSide | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return low-res mask logits (B x M x 4h x 4w) and IoU predictions (B x M), M = 3 or 1.

        One image embedding (batch 1) serves a batch of prompts. ``image_side``, from
        :meth:`image_side` with the same embedding and dense prompt, skips recomputing it.
        """
        masks, iou_pred = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, image_side
        )
        chosen = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, chosen], iou_pred[:, chosen]

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        image_side: ImageSide | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All mask tokens' logits and IoU predictions, before choosing single or multi-mask."""
        batch = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.expand(batch, -1, -1), sparse_prompt_embeddings], dim=1)
        if image_side is None:
            image_side = self.image_side(image_embeddings, image_pe, dense_prompt_embeddings)

        token_out, image_tokens = self.transformer(None, None, tokens, image=image_side)
        iou_token_out = token_out[:, 0, :]
        mask_tokens_out = token_out[:, 1 : 1 + self.num_mask_tokens, :]

        height, width = image_pe.shape[-2:]
        image_out = image_tokens.transpose(1, 2).reshape(batch, self.transformer_dim, height, width)
        upscaled = self.output_upscaling(image_out)
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, index, :]) for index, mlp in enumerate(self.output_hypernetworks_mlps)],
            dim=1,
        )
        _, up_channels, up_h, up_w = upscaled.shape
        masks = (hyper_in @ upscaled.view(batch, up_channels, up_h * up_w)).view(batch, -1, up_h, up_w)
        return masks, self.iou_prediction_head(iou_token_out)
