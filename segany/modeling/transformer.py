"""The two-way transformer of the mask decoder.

Prompt tokens and image tokens update each other: tokens self-attend, tokens attend to the
image, the tokens' MLP runs, then the image attends back to the tokens. Positional
encodings are re-added to queries and keys at every attention.

Until the first block's image->token update, the image side depends only on the image (and
the dense prompt), not on the prompt tokens. :class:`ImageSide` holds that part so a
predictor can compute it once per image and reuse it for every prompt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from segany.modeling.blocks import FeedForward


class TokenAttention(nn.Module):
    """Multi-head attention with separate q/k/v projections, optionally to a narrower width."""

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.num_heads = num_heads
        internal_dim = embedding_dim // downsample_rate
        if internal_dim % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide the attention width ({internal_dim})")
        self.q_proj = nn.Linear(embedding_dim, internal_dim)
        self.k_proj = nn.Linear(embedding_dim, internal_dim)
        self.v_proj = nn.Linear(embedding_dim, internal_dim)
        self.out_proj = nn.Linear(internal_dim, embedding_dim)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """B x N x C projections to B x heads x N x C/heads."""
        batch, tokens, width = x.shape
        return x.view(batch, tokens, self.num_heads, width // self.num_heads).transpose(1, 2)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention over already projected, head-split tensors, then the output projection."""
        batch = max(q.shape[0], k.shape[0])
        # Few tokens on one side: plain attention is as fast as SDPA here, and keeps the
        # decoder's logits bit-identical to the reference implementation's.
        weights = torch.softmax((q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1]), dim=-1)
        out = weights @ v
        _, heads, tokens, head_dim = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(batch, tokens, heads * head_dim))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.attend(
            self.split_heads(self.q_proj(q)), self.split_heads(self.k_proj(k)), self.split_heads(self.v_proj(v))
        )


@dataclass
class ImageSide:
    """The prompt-independent image-side tensors of one image (batch 1), for reuse across prompts."""

    keys: torch.Tensor  # image tokens, 1 x HW x C
    key_pe: torch.Tensor  # their positional encoding, 1 x HW x C
    token_to_image_k: torch.Tensor  # first block's projected keys/values/queries, head-split
    token_to_image_v: torch.Tensor
    image_to_token_q: torch.Tensor


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token->image attention, token MLP, image->token attention."""

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = TokenAttention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = TokenAttention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = FeedForward(embedding_dim, mlp_dim, nn.ReLU)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = TokenAttention(embedding_dim, num_heads, attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def image_side(self, keys: torch.Tensor, key_pe: torch.Tensor) -> ImageSide:
        """Project the image tokens for both cross-attentions (no dependence on the prompt)."""
        positioned = keys + key_pe
        to_image, to_token = self.cross_attn_token_to_image, self.cross_attn_image_to_token
        return ImageSide(
            keys=keys,
            key_pe=key_pe,
            token_to_image_k=to_image.split_heads(to_image.k_proj(positioned)),
            token_to_image_v=to_image.split_heads(to_image.v_proj(keys)),
            image_to_token_q=to_token.split_heads(to_token.q_proj(positioned)),
        )

    def forward(
        self, queries: torch.Tensor, query_pe: torch.Tensor, image: ImageSide
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.skip_first_layer_pe:
            # The first layer's queries are the prompt embeddings themselves, which already
            # carry their positions: they replace the tokens instead of updating them.
            queries = self.self_attn(queries, queries, queries)
        else:
            positioned = queries + query_pe
            queries = queries + self.self_attn(positioned, positioned, queries)
        queries = self.norm1(queries)

        to_image = self.cross_attn_token_to_image
        attended = to_image.attend(
            to_image.split_heads(to_image.q_proj(queries + query_pe)), image.token_to_image_k, image.token_to_image_v
        )
        queries = self.norm2(queries + attended)
        queries = self.norm3(queries + self.mlp(queries))

        to_token = self.cross_attn_image_to_token
        attended = to_token.attend(
            image.image_to_token_q,
            to_token.split_heads(to_token.k_proj(queries + query_pe)),
            to_token.split_heads(to_token.v_proj(queries)),
        )
        keys = self.norm4(image.keys + attended)
        return queries, keys


class TwoWayTransformer(nn.Module):
    """A stack of two-way blocks and a final token->image attention."""

    def __init__(
        self,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim,
                num_heads,
                mlp_dim,
                attention_downsample_rate,
                skip_first_layer_pe=index == 0,
            )
            for index in range(depth)
        )
        self.final_attn_token_to_image = TokenAttention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def image_side(self, image_embedding: torch.Tensor, image_pe: torch.Tensor) -> ImageSide:
        """The first block's prompt-independent work for an image (B x C x H x W + its PE)."""
        keys = image_embedding.flatten(2).transpose(1, 2).contiguous()
        key_pe = image_pe.flatten(2).transpose(1, 2).contiguous()
        return self.layers[0].image_side(keys, key_pe)

    def forward(
        self,
        image_embedding: torch.Tensor | None,
        image_pe: torch.Tensor | None,
        point_embedding: torch.Tensor,
        image: ImageSide | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Image B x C x H x W (+ its PE), or its precomputed ``image`` side, and tokens B x N x C
        -> (tokens, image tokens B x HW x C)."""
        if image is None:
            image = self.image_side(image_embedding, image_pe)
        key_pe = image.key_pe
        queries = point_embedding
        for index, layer in enumerate(self.layers):
            if index > 0:
                image = layer.image_side(keys, key_pe)
            queries, keys = layer(queries, point_embedding, image)
        attended = self.final_attn_token_to_image(queries + point_embedding, keys + key_pe, keys)
        return self.norm_final_attn(queries + attended), keys
