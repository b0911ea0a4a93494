"""The two-way transformer of the mask decoder.

Prompt tokens and image tokens update each other: tokens self-attend, tokens attend to the
image, the tokens' MLP runs, then the image attends back to the tokens. Positional
encodings are re-added to queries and keys at every attention.

Per prompt there are ~7 tokens but 4096 image tokens, so the cost is in the linear
projections over the image tokens. Those are never applied to the image tokens: each is
moved, by associativity, onto the token side, where it is a product over ~heads x tokens
rows instead of 4096 (see :meth:`TokenAttention.read_image` and
:meth:`TokenAttention.update_image`). Only the first block's projections are applied to the
image, because until that block's image->token update the image side depends only on the
image (and the dense prompt): :class:`ImageSide` holds them, so a predictor computes them
once per image and reuses them for every prompt.

Batches: the image side has batch 1 (one image, many prompts) or one entry per prompt.
Prompts that share an image entry are stacked as extra rows of one matmul against it, so
the image tensors are never expanded or copied per prompt.
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
        self.head_dim = internal_dim // num_heads
        self.q_proj = nn.Linear(embedding_dim, internal_dim)
        self.k_proj = nn.Linear(embedding_dim, internal_dim)
        self.v_proj = nn.Linear(embedding_dim, internal_dim)
        self.out_proj = nn.Linear(internal_dim, embedding_dim)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """B x N x C projections to B x heads x N x C/heads."""
        batch, tokens, width = x.shape
        return x.view(batch, tokens, self.num_heads, width // self.num_heads).transpose(1, 2)

    def per_head(self, projection: nn.Linear) -> torch.Tensor:
        """A q/k/v projection's weight as heads x head_dim x C (each head's rows)."""
        return projection.weight.view(self.num_heads, self.head_dim, -1)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Plain attention among the prompt tokens (few on both sides: nothing to fold)."""
        q, k, v = self.split_heads(self.q_proj(q)), self.split_heads(self.k_proj(k)), self.split_heads(self.v_proj(v))
        weights = torch.softmax((q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim), dim=-1)
        out = weights @ v
        batch, heads, tokens, head_dim = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(batch, tokens, heads * head_dim))

    def read_image(self, queries: torch.Tensor, image: torch.Tensor, positioned: torch.Tensor) -> torch.Tensor:
        """Tokens (B x T x C) attend to image tokens (Bi x N x C; keys are ``positioned``, the
        image plus its PE), without projecting the image: B x T x C.

        Per head, q_h (W_k,h x + b_k,h) = (q_h W_k,h) x + q_h·b_k,h, and q_h·b_k,h is the same
        for every image token, so softmax cancels it. The values A_h (x W_v,h^T + b_v,h) are
        (A_h x) W_v,h^T + b_v,h, since each row of A_h sums to 1.
        """
        batch, tokens, width = queries.shape
        image_batch = image.shape[0]
        q = self.q_proj(queries).view(batch, tokens, self.num_heads, self.head_dim) / math.sqrt(self.head_dim)
        folded_keys = torch.einsum("bthe,hec->bhtc", q, self.per_head(self.k_proj))
        weights = torch.softmax(folded_keys.reshape(image_batch, -1, width) @ positioned.transpose(1, 2), dim=-1)
        mixed = (weights @ image).view(batch, self.num_heads, tokens, width)
        values = torch.einsum("bhtc,hec->bthe", mixed, self.per_head(self.v_proj))
        return self.out_proj(values.reshape(batch, tokens, -1) + self.v_proj.bias)

    def read_projected_image(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Tokens (B x T x C) attend to already projected, head-split image keys and values
        (Bi x heads x N x head_dim): B x T x C."""
        batch, tokens, _ = queries.shape
        image_batch, heads, _, head_dim = keys.shape
        group = batch // image_batch
        q = self.q_proj(queries) / math.sqrt(head_dim)
        q = q.view(image_batch, group * tokens, heads, head_dim).transpose(1, 2)
        out = torch.softmax(q @ keys.transpose(-2, -1), dim=-1) @ values
        return self.out_proj(out.transpose(1, 2).reshape(batch, tokens, heads * head_dim))

    def update_image(
        self, positioned: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, residual: torch.Tensor
    ) -> torch.Tensor:
        """Image tokens (queries ``positioned``, Bi x N x C) attend to tokens (keys and values
        B x T x C), without projecting the image: ``residual`` (Bi or B x N x C) plus the
        update, B x N x C.

        Per head, (W_q,h x + b_q,h)·k_ht = x·(W_q,h^T k_ht) + b_q,h·k_ht: the query projection
        moves onto the keys, which become heads x tokens rows of width C.
        """
        batch, tokens, width = keys.shape
        image_batch, pixels, _ = positioned.shape
        group = batch // image_batch
        k = self.k_proj(keys).view(batch, tokens, self.num_heads, self.head_dim) / math.sqrt(self.head_dim)
        folded_keys = torch.einsum("bthe,hec->bhtc", k, self.per_head(self.q_proj))
        key_bias = torch.einsum("bthe,he->bht", k, self.q_proj.bias.view(self.num_heads, self.head_dim))
        # Tokens x pixels (softmax over a middle axis of 7 is far cheaper than over a last one).
        folded_keys = folded_keys.reshape(image_batch, -1, width)
        logits = torch.baddbmm(key_bias.reshape(image_batch, -1, 1), folded_keys, positioned.transpose(1, 2))
        weights = torch.softmax(logits.view(image_batch, group, self.num_heads, tokens, pixels), dim=-2)
        return self.mix_tokens(weights, values, residual)

    def update_projected_image(
        self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, residual: torch.Tensor
    ) -> torch.Tensor:
        """Image tokens (already projected, head-split queries, Bi x heads x N x head_dim) attend
        to tokens (keys and values B x T x C): ``residual`` plus the update, B x N x C."""
        batch, tokens, _ = keys.shape
        image_batch, heads, pixels, head_dim = queries.shape
        group = batch // image_batch
        k = self.k_proj(keys) / math.sqrt(head_dim)
        k = k.view(image_batch, group * tokens, heads, head_dim).transpose(1, 2)
        # Tokens x pixels, not pixels x tokens: the prompts sharing an image entry then stack
        # as rows, and each prompt's logits round the same whatever the batch.
        logits = (k @ queries.transpose(-2, -1)).view(image_batch, heads, group, tokens, pixels)
        return self.mix_tokens(torch.softmax(logits, dim=-2).transpose(1, 2), values, residual)

    def mix_tokens(self, weights: torch.Tensor, values: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``residual`` (Bi or B x N x C) plus the output projection of attention ``weights``
        (Bi x prompts-per-image x heads x T x N, softmax over T) over token ``values`` (B x T x C).

        W_o concat_h(A_h V_h) = sum_h A_h (V_h W_o,h^T): the output projection is applied to
        the heads x tokens value rows, and the image side is one matmul over all heads. The
        bias rides along as b_o / heads on every value row, since each head's weights sum to 1.
        """
        batch, tokens, width = values.shape
        pixels = weights.shape[-1]
        v = self.v_proj(values).view(batch, tokens, self.num_heads, self.head_dim)
        out_weight = self.out_proj.weight.view(width, self.num_heads, self.head_dim)
        projected = torch.einsum("bthe,che->bhtc", v, out_weight) + self.out_proj.bias / self.num_heads
        weights = weights.reshape(batch, -1, pixels).transpose(1, 2)
        return torch.baddbmm(residual, weights, projected.reshape(batch, -1, width))


@dataclass
class ImageSide:
    """The prompt-independent image-side tensors of one image (batch 1, or one per prompt)."""

    keys: torch.Tensor  # image tokens, Bi x HW x C
    key_pe: torch.Tensor  # their positional encoding, 1 x HW x C
    token_to_image_k: torch.Tensor  # first block's projected keys/values/queries, Bi x heads x HW x C/heads
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
            token_to_image_k=to_image.split_heads(to_image.k_proj(positioned)).contiguous(),
            token_to_image_v=to_image.split_heads(to_image.v_proj(keys)).contiguous(),
            image_to_token_q=to_token.split_heads(to_token.q_proj(positioned)).contiguous(),
        )

    def forward(
        self,
        queries: torch.Tensor,
        query_pe: torch.Tensor,
        keys: torch.Tensor,
        key_pe: torch.Tensor,
        projected: ImageSide | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Update tokens (B x T x C) and image tokens (Bi x N x C; B x N x C after).

        ``projected``, this block's :meth:`image_side` of ``keys``, replaces the folded
        cross-attentions by ones on its projections (cheaper when shared by many prompts).
        """
        if self.skip_first_layer_pe:
            # The first layer's queries are the prompt embeddings themselves, which already
            # carry their positions: they replace the tokens instead of updating them.
            queries = self.self_attn(queries, queries, queries)
        else:
            positioned = queries + query_pe
            queries = queries + self.self_attn(positioned, positioned, queries)
        queries = self.norm1(queries)

        to_image, to_token = self.cross_attn_token_to_image, self.cross_attn_image_to_token
        if projected is None:
            positioned_keys = keys + key_pe
            attended = to_image.read_image(queries + query_pe, keys, positioned_keys)
        else:
            attended = to_image.read_projected_image(
                queries + query_pe, projected.token_to_image_k, projected.token_to_image_v
            )
        queries = self.norm2(queries + attended)
        queries = self.norm3(queries + self.mlp(queries))

        if projected is None:
            keys = to_token.update_image(positioned_keys, queries + query_pe, queries, keys)
        else:
            keys = to_token.update_projected_image(projected.image_to_token_q, queries + query_pe, queries, keys)
        return queries, self.norm4(keys)


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
        outputs: list[int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Image Bi x C x H x W (+ its PE), or its precomputed ``image`` side, and tokens B x T x C
        -> (tokens, image tokens B x HW x C); Bi is 1 or B.

        ``outputs`` (token indices) limits the returned tokens to those the caller reads: each
        token's final attention to the image is its own, so the others' is never computed.
        """
        if image is None:
            image = self.image_side(image_embedding, image_pe)
        queries, keys, key_pe = point_embedding, image.keys, image.key_pe
        for index, layer in enumerate(self.layers):
            queries, keys = layer(queries, point_embedding, keys, key_pe, image if index == 0 else None)
        if outputs is not None:
            queries, point_embedding = queries[:, outputs], point_embedding[:, outputs]
        attended = self.final_attn_token_to_image.read_image(queries + point_embedding, keys, keys + key_pe)
        return self.norm_final_attn(queries + attended), keys
