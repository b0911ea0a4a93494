"""The two-way transformer of the mask decoder.

Prompt tokens and image tokens update each other: tokens self-attend, tokens attend to the
image, the tokens' MLP runs, then the image attends back to the tokens. Positional
encodings are re-added to queries and keys at every attention.

Per prompt there are ~7 tokens but 4096 image tokens, so the cost is in the linear
projections over the image tokens. Those are never applied to the image tokens: each is
moved, by associativity, onto the token side, where it is a product over ~heads x tokens
rows instead of 4096 (see :meth:`TokenAttention.fold_queries` and :class:`ImageUpdate`).
Only the first block's projections are applied to the image, because until that block's
image->token update the image side depends only on the image (and the dense prompt):
:class:`ImageSide` holds them, so a predictor computes them once per image and reuses them
for every prompt.

What is left on the image side is per image token, except the softmax of a token->image
attention, which spans all of them. So the image tokens can be cut into ranges that run in
parallel CPU streams (:mod:`segany.modeling.streams`), meeting only to combine a read's
softmax. To meet once per block, not twice, each block's image update also computes the
logits of the next read (the next block's, or the final attention's): the tokens that read
are known before the image is updated.

Batches: the image side has batch 1 (one image, many prompts) or one entry per prompt.
Prompts that share an image entry are stacked as extra rows of one matmul against it, so
the image tensors are never expanded or copied per prompt.

In eager CPU inference a predictor's image side goes further (:meth:`TwoWayTransformer.run`
with ``factored``): the image updates themselves are never applied to the image tokens, and
every later read of them goes through maps of the image made once
(:mod:`segany.modeling.update_maps`), which leaves a prompt about half the arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from segany.modeling.blocks import FeedForward
from segany.modeling.factored_image import FactoredMap, RangeFactors
from segany.modeling.streams import Result, in_streams, split_range
from segany.modeling.update_maps import UpdateMaps


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

    def fold_queries(self, queries: torch.Tensor, image_batch: int) -> torch.Tensor:
        """The token side of tokens (B x T x C) reading the image: their queries moved through
        the key projection onto the image width, Bi x (B/Bi x heads x T) x C, so that the
        logits over image tokens whose keys are ``positioned`` are ``folded @ positioned^T``.

        Per head, q_h (W_k,h x + b_k,h) = (q_h W_k,h) x + q_h·b_k,h, and q_h·b_k,h is the same
        for every image token, so softmax cancels it.
        """
        q = self.head_queries(queries)
        return torch.einsum("bthe,hec->bhtc", q, self.per_head(self.k_proj)).reshape(image_batch, -1, queries.shape[-1])

    def head_queries(self, queries: torch.Tensor) -> torch.Tensor:
        """Tokens' (B x T x C) queries per head, scaled for the logits: B x T x heads x head_dim."""
        batch, tokens, _ = queries.shape
        return self.q_proj(queries).view(batch, tokens, self.num_heads, self.head_dim) / math.sqrt(self.head_dim)

    def read_values(self, mixed: torch.Tensor, batch: int) -> torch.Tensor:
        """What the tokens read, B x T x C, from ``mixed``: the attention weights over the image
        tokens (values unprojected) times those tokens, Bi x (B/Bi x heads x T) x C.

        The values A_h (x W_v,h^T + b_v,h) are (A_h x) W_v,h^T + b_v,h, since each row of A_h
        sums to 1.
        """
        width = mixed.shape[-1]
        mixed = mixed.view(batch, self.num_heads, -1, width)
        values = torch.einsum("bhtc,hec->bthe", mixed, self.per_head(self.v_proj))
        return self.read_head_values(values + self.v_proj.bias.view(self.num_heads, self.head_dim))

    def read_head_values(self, values: torch.Tensor) -> torch.Tensor:
        """What the tokens read (B x T x C), from the values they mixed, B x T x heads x head_dim."""
        return self.out_proj(values.flatten(2))

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

    def image_update(self, keys: torch.Tensor, values: torch.Tensor, image_batch: int, projected: bool) -> ImageUpdate:
        """The token side of image tokens attending to tokens (keys and values B x T x C), for
        image queries given ``projected`` (head-split q projections, as :class:`ImageSide` holds)
        or as the positioned image tokens themselves.

        Per head, (W_q,h x + b_q,h)·k_ht = x·(W_q,h^T k_ht) + b_q,h·k_ht: the query projection
        moves onto the keys, which become heads x tokens rows of width C. The output projection
        moves onto the values: W_o concat_h(A_h V_h) = sum_h A_h (V_h W_o,h^T), and its bias
        rides along as b_o / heads on every value row, since each head's weights sum to 1.
        """
        batch, tokens, width = keys.shape
        k, v = self.head_keys_values(keys, values)
        if projected:
            folded, bias = k.reshape(image_batch, -1, self.num_heads, self.head_dim).transpose(1, 2), None
        else:
            folded = torch.einsum("bthe,hec->bhtc", k, self.per_head(self.q_proj)).reshape(image_batch, -1, width)
            bias = torch.einsum("bthe,he->bht", k, self.q_proj.bias.view(self.num_heads, self.head_dim))
            bias = bias.reshape(image_batch, -1, 1)
        out_weight = self.out_proj.weight.view(width, self.num_heads, self.head_dim)
        rows = torch.einsum("bthe,che->bhtc", v, out_weight) + self.out_proj.bias / self.num_heads
        return ImageUpdate(folded, bias, rows.reshape(batch, -1, width), self.num_heads, tokens, v)

    def head_keys_values(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens' (B x T x C) keys, scaled for the logits, and values per head: B x T x heads x
        head_dim each, before any folding."""
        batch, tokens, _ = keys.shape
        k = self.k_proj(keys).view(batch, tokens, self.num_heads, self.head_dim) / math.sqrt(self.head_dim)
        return k, self.v_proj(values).view(batch, tokens, self.num_heads, self.head_dim)


@dataclass
class ImageUpdate:
    """The token side of an image->token attention, ready to update any range of image tokens."""

    keys: torch.Tensor  # Bi x (B/Bi x heads x T) x C folded keys, or Bi x heads x (B/Bi x T) x head_dim
    key_bias: torch.Tensor | None  # Bi x (B/Bi x heads x T) x 1 with folded keys, else None
    values: torch.Tensor  # B x (heads x T) x C, values through the output projection
    heads: int
    tokens: int
    head_values: torch.Tensor  # B x T x heads x head_dim, the values before it

    def weights(self, queries: torch.Tensor) -> torch.Tensor:
        """The attention weights (B x heads*T x n) of n image tokens whose queries are ``queries``
        (as for :meth:`apply`)."""
        batch, image_batch, pixels = len(self.values), len(self.keys), queries.shape[-2]
        group = batch // image_batch
        # Logits are tokens x pixels, softmax over the middle axis of T tokens (far cheaper than
        # over a last one), and the prompts sharing an image entry stack as rows, so that each
        # prompt's logits round the same whatever the batch.
        if self.key_bias is None:
            logits = (self.keys @ queries.transpose(-2, -1)).view(image_batch, self.heads, group, self.tokens, pixels)
            weights = torch.softmax(logits, dim=-2).transpose(1, 2)
        else:
            logits = torch.baddbmm(self.key_bias, self.keys, queries.transpose(1, 2))
            weights = torch.softmax(logits.view(image_batch, group, self.heads, self.tokens, pixels), dim=-2)
        return weights.reshape(batch, -1, pixels)

    def apply(
        self, queries: torch.Tensor, residual: torch.Tensor, in_place: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``residual`` (Bi or B x n x C) plus the update of n image tokens whose queries are
        ``queries``: positioned tokens (Bi x n x C), or their head-split projections
        (Bi x heads x n x head_dim) for projected keys: B x n x C, and the attention weights
        (B x heads*T x n) that multiplied :attr:`values`. ``in_place`` adds the update to
        ``residual`` itself (already B x n x C), saving a copy of it."""
        weights = self.weights(queries)
        if in_place:
            return residual.baddbmm_(weights.transpose(1, 2), self.values), weights
        return torch.baddbmm(residual, weights.transpose(1, 2), self.values), weights


def take_tokens(tokens: torch.Tensor, indices: Sequence[int]) -> torch.Tensor:
    """``tokens[:, indices]`` (B x T x ...) from slices of consecutive indices: no index tensor is
    copied to the device, so a CUDA graph can capture it (segany.speed.cuda_graphs)."""
    runs: list[list[int]] = []
    for index in indices:
        if runs and index == runs[-1][1]:
            runs[-1][1] += 1
        else:
            runs.append([index, index + 1])
    parts = [tokens[:, start:stop] for start, stop in runs]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


class PixelSplit:
    """The image tokens cut into contiguous ranges, with their per-range work run inline for one
    range and in parallel CPU streams (:func:`segany.modeling.streams.in_streams`) for several."""

    def __init__(self, pixels: int, streams: int = 1) -> None:
        self.ranges = split_range(pixels, streams)

    def map(self, work: Callable[..., Result], *per_range: Sequence) -> list[Result]:
        """``[work(*each range's own items of per_range) for each range]``."""
        return in_streams([partial(work, *items) for items in zip(*per_range, strict=True)])

    def cut(self, tensor: torch.Tensor, dim: int = 1) -> list[torch.Tensor]:
        """``tensor``'s ranges along ``dim`` (views)."""
        return [tensor.narrow(dim, part.start, len(part)) for part in self.ranges]

    def join(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per-range tensors (B x n x C) as one B x N x C tensor."""
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def attend(self, logits: Sequence[torch.Tensor], image: Sequence[torch.Tensor]) -> torch.Tensor:
        """Softmax over all image tokens of ``logits`` (per range, Bi x R x n) times the image
        tokens (per range, Bi x n x C): Bi x R x C. With several ranges, the exponentials take
        the largest logit of any range, and the sum over ranges divides the ranges' products."""
        if len(logits) == 1:
            return torch.softmax(logits[0], dim=-1) @ image[0]

        def weigh(exponentials: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return exponentials.sum(dim=-1, keepdim=True), exponentials @ tokens

        sums, products = zip(*self.exponential_shares(logits, weigh, image))
        return torch.stack(products).sum(dim=0) / torch.stack(sums).sum(dim=0)

    def exponential_shares(
        self, logits: Sequence[torch.Tensor], weigh: Callable[..., Result], *per_range: Sequence
    ) -> list[Result]:
        """``weigh(exp(logits - peak), *items)`` for each range's logits (Bi x R x n) and items,
        the peak being each row's largest logit in any range: the ranges' shares of a softmax
        over all image tokens."""
        peak = torch.stack([part.amax(dim=-1, keepdim=True) for part in logits]).amax(dim=0)
        return self.map(lambda share, *items: weigh(torch.exp(share - peak), *items), logits, *per_range)


@dataclass
class ImageSide:
    """The prompt-independent image-side tensors of one image (batch 1, or one per prompt)."""

    keys: torch.Tensor  # image tokens, Bi x HW x C
    key_pe: torch.Tensor  # their positional encoding, 1 x HW x C
    token_to_image_k: torch.Tensor  # first block's projected keys/values/queries, Bi x heads x HW x C/heads
    token_to_image_v: torch.Tensor
    image_to_token_q: torch.Tensor
    # The mask decoder's first upscaling product made ready for prompts, when it keeps one
    # (MaskDecoder.image_side; segany.modeling.factored_image).
    upscaling: FactoredMap | None = None
    # The image updates' maps (segany.modeling.update_maps), for eager CPU inference.
    update_maps: UpdateMaps | None = None


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token->image attention, token MLP, image->token attention.

    The block's steps are methods that :class:`TwoWayTransformer` interleaves across blocks
    (see the module's docstring)."""

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
        self.mlp = FeedForward(embedding_dim, mlp_dim, nn.ReLU, prepacked=True)
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

    def image_side_weights(self) -> tuple[torch.Tensor, ...]:
        """The weights :meth:`image_side` reads."""
        to_image, to_token = self.cross_attn_token_to_image, self.cross_attn_image_to_token
        projections = (to_image.k_proj, to_image.v_proj, to_token.q_proj)
        return tuple(tensor for projection in projections for tensor in (projection.weight, projection.bias))

    def attend_tokens(self, queries: torch.Tensor, query_pe: torch.Tensor) -> torch.Tensor:
        """The tokens' self-attention (B x T x C)."""
        if self.skip_first_layer_pe:
            # The first layer's queries are the prompt embeddings themselves, which already
            # carry their positions: they replace the tokens instead of updating them.
            return self.norm1(self.self_attn(queries, queries, queries))
        positioned = queries + query_pe
        return self.norm1(queries + self.self_attn(positioned, positioned, queries))

    def take_reading(self, queries: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """The tokens after adding what they read of the image, then their MLP."""
        queries = self.norm2(queries + attended)
        return self.norm3(queries + self.mlp(queries))

    def image_update(self, queries: torch.Tensor, query_pe: torch.Tensor, image_batch: int, projected: bool) -> ImageUpdate:
        """The token side of the image->token attention, for the tokens (B x T x C)."""
        return self.cross_attn_image_to_token.image_update(queries + query_pe, queries, image_batch, projected)

    def update_heads(self, queries: torch.Tensor, query_pe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The image->token attention's keys and values per head, unfolded (for update maps)."""
        return self.cross_attn_image_to_token.head_keys_values(queries + query_pe, queries)


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

    def image_side(self, image_embedding: torch.Tensor, image_pe: torch.Tensor, factored: bool = False) -> ImageSide:
        """The first block's prompt-independent work for an image (B x C x H x W + its PE);
        ``factored`` adds the image updates' maps (:mod:`segany.modeling.update_maps`) where
        :meth:`run` can use them: two blocks, one image."""
        keys = image_embedding.flatten(2).transpose(1, 2).contiguous()
        key_pe = image_pe.flatten(2).transpose(1, 2).contiguous()
        side = self.layers[0].image_side(keys, key_pe)
        if factored and len(self.layers) == 2 and len(keys) == 1:
            side.update_maps = UpdateMaps.of(*self.layers, self.final_attn_token_to_image, keys, key_pe)
        return side

    def image_side_weights(self) -> tuple[torch.Tensor, ...]:
        """The weights :meth:`image_side` reads (with ``factored``)."""
        first, second, final = self.layers[0], self.layers[-1], self.final_attn_token_to_image
        read, second_update = second.cross_attn_token_to_image, second.cross_attn_image_to_token
        modules = (
            first.cross_attn_image_to_token.out_proj, first.norm4, read.v_proj, second_update.q_proj,
            second_update.out_proj, second.norm4, final.v_proj,
        )
        factored = tuple(tensor for module in modules for tensor in (module.weight, module.bias))
        return (*self.layers[0].image_side_weights(), *factored, read.k_proj.weight, final.k_proj.weight)

    def forward(
        self,
        image_embedding: torch.Tensor | None,
        image_pe: torch.Tensor | None,
        point_embedding: torch.Tensor,
        image: ImageSide | None = None,
        outputs: list[int] | None = None,
        streams: int = 1,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Image Bi x C x H x W (+ its PE), or its precomputed ``image`` side, and tokens B x T x C
        -> (tokens, image tokens B x HW x C); Bi is 1 or B.

        ``outputs`` (token indices) limits the returned tokens to those the caller reads: each
        token's final attention to the image is its own, so the others' is never computed.
        ``streams`` > 1 cuts the image tokens into that many ranges run in parallel CPU streams.
        """
        if image is None:
            image = self.image_side(image_embedding, image_pe)
        result = self.run(image, point_embedding, outputs, streams)
        return result.tokens, result.image_tokens

    def run(
        self,
        image: ImageSide,
        point_embedding: torch.Tensor,
        outputs: list[int] | None = None,
        streams: int = 1,
        factored: bool = False,
    ) -> TransformerResult:
        """:meth:`forward` on an image side, and with ``factored`` the image tokens' factors too
        (:mod:`segany.modeling.factored_image`); if the image side then has update maps
        (:mod:`segany.modeling.update_maps`), the image tokens are never made (None)."""
        pe, image_batch = point_embedding, len(image.keys)
        split = PixelSplit(image.keys.shape[1], streams)
        if factored and image.update_maps is not None:
            return self._run_on_update_maps(image, point_embedding, outputs, split)
        queries = self._first_read(image, point_embedding)
        keys, key_pe = split.cut(image.keys), split.cut(image.key_pe)
        # What the image tokens query the tokens with: the first block's projections, then themselves.
        image_queries = split.cut(image.image_to_token_q, dim=2)
        kept = [RangeFactors(part, [], []) for part in split.ranges] if factored else None
        head_values = []
        for index, layer in enumerate(self.layers):
            # Who reads the image next, known before this block updates it.
            if index + 1 < len(self.layers):
                reader = self.layers[index + 1]
                reading = reader.attend_tokens(queries, pe)
                to_image, read_pe = reader.cross_attn_token_to_image, pe
            else:
                reading = queries if outputs is None else take_tokens(queries, outputs)
                to_image, read_pe = self.final_attn_token_to_image, pe if outputs is None else take_tokens(pe, outputs)
            # Once updated, the image tokens have one entry per prompt.
            folded = to_image.fold_queries(reading + read_pe, len(queries))
            update = layer.image_update(queries, pe, image_batch if index == 0 else len(queries), projected=index == 0)
            head_values.append(update.head_values)
            # Past the first block the image tokens are this pass's own, and read for the last time
            # (the read before this update has mixed them): outside autograd they take the update.
            in_place = index > 0 and not torch.is_grad_enabled()
            work = partial(self._update_range, layer.norm4, update, folded, in_place)
            keys, image_queries, logits = zip(*split.map(work, keys, key_pe, image_queries, kept or [None] * len(keys)))
            attended = to_image.read_values(split.attend(logits, keys), len(reading))
            if index + 1 < len(self.layers):
                queries = reader.take_reading(reading, attended)
            else:
                queries = self.norm_final_attn(reading + attended)
        return TransformerResult(queries, split.join(keys), None if kept is None else (kept, head_values))

    def _run_on_update_maps(
        self, image: ImageSide, point_embedding: torch.Tensor, outputs: list[int] | None, split: PixelSplit
    ) -> TransformerResult:
        """:meth:`run` of two blocks with ``factored``: the image updates are never applied to the
        image tokens, the reads of them go through the image's :class:`UpdateMaps`; the image
        tokens are not returned (None)."""
        pe = point_embedding
        first, second = self.layers
        queries = self._first_read(image, point_embedding)
        reading = second.attend_tokens(queries, pe)
        update = first.image_update(queries, pe, len(image.keys), projected=True)
        read = second.cross_attn_token_to_image
        prompts = image.update_maps.for_prompts(update.head_values, read.head_queries(reading + pe))

        def first_range(part: range, image_queries: torch.Tensor) -> tuple[torch.Tensor, ...]:
            weights = update.weights(image_queries)
            return (weights, *prompts.first_read(part, weights))

        weights, rstd, logits = zip(*split.map(first_range, split.ranges, split.cut(image.image_to_token_q, dim=2)))
        shares = split.exponential_shares(logits, prompts.weigh_read, split.ranges, weights, rstd)
        queries = second.take_reading(reading, read.read_head_values(prompts.read_values(shares)))
        reading = queries if outputs is None else take_tokens(queries, outputs)
        final = self.final_attn_token_to_image
        final_queries = final.head_queries(reading + (pe if outputs is None else take_tokens(pe, outputs)))
        # The second update's heads alone: its keys and values are only read through the maps.
        second_keys, second_values = second.update_heads(queries, pe)
        update_prompts = prompts.for_update(second_keys, second_values, final_queries)
        second_weights, second_rstd, logits = zip(*split.map(update_prompts.second_update, split.ranges, weights, rstd))
        blocks = [[(w, r), (w2, r2)] for w, r, w2, r2 in zip(weights, rstd, second_weights, second_rstd, strict=True)]
        shares = split.exponential_shares(logits, update_prompts.weigh_final, split.ranges, blocks)
        queries = self.norm_final_attn(reading + final.read_head_values(update_prompts.final_values(shares)))
        kept = [
            RangeFactors(part, [block[0][0], block[1][0]], [block[0][1], block[1][1]])
            for part, block in zip(split.ranges, blocks, strict=True)
        ]
        return TransformerResult(queries, None, (kept, [update.head_values, second_values]))

    def _first_read(self, image: ImageSide, point_embedding: torch.Tensor) -> torch.Tensor:
        """The first block's token side up to its image update: the tokens' self-attention, their
        read of the image's projected keys and values, their MLP (B x T x C)."""
        first = self.layers[0]
        queries = first.attend_tokens(point_embedding, point_embedding)
        attended = first.cross_attn_token_to_image.read_projected_image(
            queries + point_embedding, image.token_to_image_k, image.token_to_image_v
        )
        return first.take_reading(queries, attended)

    @staticmethod
    def _update_range(
        norm: nn.LayerNorm,
        update: ImageUpdate,
        folded: torch.Tensor,
        in_place: bool,
        keys: torch.Tensor,
        key_pe: torch.Tensor,
        queries: torch.Tensor,
        kept: RangeFactors | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One range of image tokens updated by a block (``update``, then ``norm``), then positioned,
        and the next read's logits over them (``folded`` queries): (keys, positioned, logits).
        ``kept``, when given, keeps the update's weights and the norm's inverse deviations."""
        updated, weights = update.apply(queries, keys, in_place)
        if kept is None:
            keys = norm(updated)
        else:
            keys, _, rstd = torch.native_layer_norm(updated, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
            kept.weights.append(weights)
            kept.rstd.append(rstd)
        positioned = keys + key_pe
        return keys, positioned, folded @ positioned.transpose(1, 2)


@dataclass
class TransformerResult:
    """What :meth:`TwoWayTransformer.run` returns."""

    tokens: torch.Tensor  # B x T x C (the ``outputs`` tokens)
    image_tokens: torch.Tensor | None  # B x HW x C, None when the updates were never applied
    # When asked for: what each range kept for the image tokens' factors, and each block's head_values.
    factors: tuple[list[RangeFactors], list[torch.Tensor]] | None
