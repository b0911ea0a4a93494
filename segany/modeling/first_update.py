"""The two-way transformer's first image update, never applied to the image tokens.

The first block updates the image tokens X0 (N x C, one image's) by its image->token attention
and a LayerNorm: X1 = r1 ⊙ Z1 G1 + β1, with Z1 = (X0 + A1^T M1) P, where A1 (R x N) are the
attention weights over R = heads x T rows M1 (the tokens' values through the output projection),
P = I - 11^T/C takes out each token's mean, r1 is each token's inverse deviation, and G1, β1 the
norm's gain and offset. Everything the second block does with X1 is linear in it but its norm:

- its read of the image (tokens -> image) takes logits and values of X1 through W_k2, W_v2,
- its image update takes queries of X1 through W_q2, then Z2 = (X1 + A2^T M2) P,

and a linear map of X1 is X1 W^T = r1 ⊙ (X0 P G1 W^T + A1^T (M1 P G1 W^T)) + β1 W^T, where
X0 P G1 W^T is the image's (made once, :class:`FirstUpdate`) and M1 P G1 W^T per prompt a few
rows: R = 56 inner terms a token instead of C = 256. r1 needs no X1 either:
||Z1||^2 = ||X0 P||^2 + 2 A1·(X0 P M1^T) + A1^T (M1 P)(M1 P)^T A1, with X0 P M1^T made of the
image's X0 P W_o1 and the values. Only Z2 is made whole, as X1's map by P plus the update, and
the second block's norm takes it from there. On SAM's 4,096 image tokens that is about 45% of
the arithmetic of the blocks' image side, which is most of a prompt's. The same values as the
direct computation, to float rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


def _centred(matrix: torch.Tensor) -> torch.Tensor:
    """P @ ``matrix`` (C x K): each column without its mean."""
    return matrix - matrix.mean(dim=0)


def _per_head(tokens: torch.Tensor, heads: int) -> torch.Tensor:
    """Image tokens' features (1 x N x heads*d) as heads x N x d."""
    _, count, width = tokens.shape
    return tokens[0].view(count, heads, width // heads).transpose(0, 1).contiguous()


@dataclass
class ValueMap:
    """A matrix Π (C x K) seen from the first update's value rows: M1 Π = per head
    v_h (W_o1,h^T Π) + b_o1 Π / heads."""

    heads: torch.Tensor  # heads x d x K
    bias: torch.Tensor  # K

    @classmethod
    def of(cls, out_proj: nn.Linear, heads: int, matrix: torch.Tensor, extra_bias: torch.Tensor | None = None) -> ValueMap:
        """``extra_bias`` (C), when given, rides on every row as extra_bias Π / heads (a constant
        row of the update, since each token's weights sum to 1 per head)."""
        per_head = out_proj.weight.view(out_proj.out_features, heads, -1).permute(1, 2, 0)
        bias = out_proj.bias if extra_bias is None else out_proj.bias + extra_bias
        return cls(per_head @ matrix, (bias @ matrix) / heads)

    def rows(self, values: torch.Tensor) -> torch.Tensor:
        """M Π (B x R x K) for value heads ``values`` (B x T x heads x d), rows (head, token)."""
        rows = torch.einsum("bthe,hek->bhtk", values, self.heads) + self.bias
        return rows.reshape(len(values), -1, rows.shape[-1])


@dataclass
class FirstUpdate:
    """One image's side of the first update, for a two-way transformer's first two blocks."""

    centred_squares: torch.Tensor  # ||X0 P||^2, 1 x N
    out_reads: torch.Tensor  # X0 P W_o1, heads x N x d
    out_bias_reads: torch.Tensor  # X0 P b_o1, 1 x N
    key_reads: torch.Tensor  # X0 P G1 W_k2^T, heads x N x d (second block's read)
    key_pe: torch.Tensor  # PE W_k2^T
    value_reads: torch.Tensor  # X0 P G1 W_v2^T
    query_reads: torch.Tensor  # X0 P G1 W_q2^T (second block's update)
    query_pe: torch.Tensor  # PE W_q2^T
    normed: torch.Tensor  # X0 P G1 P, 1 x N x C
    centred_rows: ValueMap  # M1 P
    key_rows: ValueMap  # M1 P G1 W_k2^T
    value_rows: ValueMap  # M1 P G1 W_v2^T
    query_rows: ValueMap  # M1 P G1 W_q2^T
    normed_rows: ValueMap  # M1 P G1 P
    second_rows: ValueMap  # M2 P + β1 P / heads (the second update's rows)
    value_offset: torch.Tensor  # β1 W_v2^T + b_v2, heads x d
    query_offset: torch.Tensor  # β1 W_q2^T + b_q2, heads x d
    heads: int
    eps: float  # the first norm's

    @classmethod
    def of(cls, first: nn.Module, second: nn.Module, keys: torch.Tensor, key_pe: torch.Tensor) -> FirstUpdate:
        """From the first two :class:`TwoWayAttentionBlock` s and the image tokens (1 x N x C) and
        their PE every prompt starts from."""
        update, norm = first.cross_attn_image_to_token, first.norm4
        read, second_update = second.cross_attn_token_to_image, second.cross_attn_image_to_token
        heads = update.num_heads
        width = keys.shape[-1]
        centred = keys - keys.mean(dim=-1, keepdim=True)
        gain = norm.weight[:, None]
        identity = torch.eye(width, dtype=keys.dtype, device=keys.device)
        to_key, to_value, to_query = (_centred(gain * projection.weight.t()) for projection in (
            read.k_proj, read.v_proj, second_update.q_proj))
        to_normed = _centred(gain * _centred(identity))
        centring = _centred(identity)
        out = update.out_proj
        return cls(
            centred_squares=centred.square().sum(dim=-1),
            out_reads=_per_head(centred @ out.weight, heads),
            out_bias_reads=centred @ out.bias,
            key_reads=_per_head(centred @ to_key, heads),
            key_pe=_per_head(key_pe @ read.k_proj.weight.t(), heads),
            value_reads=_per_head(centred @ to_value, heads),
            query_reads=_per_head(centred @ to_query, heads),
            query_pe=_per_head(key_pe @ second_update.q_proj.weight.t(), heads),
            normed=centred @ to_normed,
            centred_rows=ValueMap.of(out, heads, centring),
            key_rows=ValueMap.of(out, heads, to_key),
            value_rows=ValueMap.of(out, heads, to_value),
            query_rows=ValueMap.of(out, heads, to_query),
            normed_rows=ValueMap.of(out, heads, to_normed),
            second_rows=ValueMap.of(second_update.out_proj, heads, centring, extra_bias=norm.bias),
            value_offset=(norm.bias @ read.v_proj.weight.t() + read.v_proj.bias).view(heads, -1),
            query_offset=(norm.bias @ second_update.q_proj.weight.t() + second_update.q_proj.bias).view(heads, -1),
            heads=heads,
            eps=norm.eps,
        )

    def for_prompts(self, values: torch.Tensor, read_queries: torch.Tensor) -> FirstUpdatePrompts:
        """The prompts' side, from the first update's value heads and the second block's read
        queries (B x T x heads x d each, the queries scaled for the logits)."""
        centred_rows = self.centred_rows.rows(values)
        key_rows = self.key_rows.rows(values)
        batch, rows, _ = key_rows.shape
        # Rows r of M1 P G1 W_k2^T against read query (head, token): B x R x R.
        key_logits = torch.einsum("brhe,bthe->brht", key_rows.view(batch, rows, self.heads, -1), read_queries)
        return FirstUpdatePrompts(
            image=self,
            values=_heads_first(values),
            read_queries=_heads_first(read_queries),
            gram=centred_rows @ centred_rows.transpose(1, 2),
            key_logits=key_logits.reshape(batch, rows, rows).transpose(1, 2),
            tokens=values.shape[1],
        )


def _heads_first(per_token: torch.Tensor) -> torch.Tensor:
    """B x T x heads x d as heads x (B x T) x d, for products against each head's image reads."""
    batch, tokens, heads, width = per_token.shape
    return per_token.permute(2, 0, 1, 3).reshape(heads, batch * tokens, width)


@dataclass
class FirstUpdatePrompts:
    """A batch of prompts' side of the first update (see :class:`FirstUpdate`)."""

    image: FirstUpdate
    values: torch.Tensor  # the first update's value heads, heads x (B x T) x d
    read_queries: torch.Tensor  # the second block's read queries, heads x (B x T) x d
    gram: torch.Tensor  # (M1 P)(M1 P)^T, B x R x R
    key_logits: torch.Tensor  # (M1 P G1 W_k2^T against the read queries)^T, B x R x R
    tokens: int

    def _image_products(self, tokens: torch.Tensor, reads: torch.Tensor, part: range) -> torch.Tensor:
        """Per head, token rows (heads x (B x T) x d) against image reads (heads x N x d) of the
        tokens in ``part``: B x R x n."""
        products = tokens @ reads[:, part.start : part.stop].transpose(1, 2)
        heads, rows, count = products.shape
        return products.view(heads, -1, self.tokens, count).transpose(0, 1).reshape(-1, heads * self.tokens, count)

    def first_read(self, part: range, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For the tokens in ``part``, given the first update's attention weights there (B x R x n):
        the first norm's inverse deviations (B x n x 1) and the second block's read logits
        (B x R x n, up to a constant per row, which its softmax over the image drops)."""
        image = self.image
        cross = self._image_products(self.values, image.out_reads, part)
        squares = image.centred_squares[:, part.start : part.stop] + 2 * image.out_bias_reads[:, part.start : part.stop]
        squares = squares + (weights * (2 * cross + self.gram @ weights)).sum(dim=1)
        rstd = torch.rsqrt(squares / image.normed.shape[-1] + image.eps).unsqueeze(-1)
        logits = self._image_products(self.read_queries, image.key_reads, part) + self.key_logits @ weights
        logits = logits.mul_(rstd.transpose(1, 2)).add_(self._image_products(self.read_queries, image.key_pe, part))
        return rstd, logits

    def weigh_read(
        self, exponentials: torch.Tensor, part: range, weights: torch.Tensor, rstd: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One range's share of the second block's read: its softmax ``exponentials`` (B x R x n)
        summed, and weighing the image's value reads and the first update's weights there."""
        scaled = exponentials * rstd.transpose(1, 2)
        heads = self.image.heads
        batch = len(exponentials)
        by_head = scaled.view(batch, heads, self.tokens, -1).transpose(0, 1).reshape(heads, batch * self.tokens, -1)
        image_part = by_head @ self.image.value_reads[:, part.start : part.stop]
        return exponentials.sum(dim=-1), image_part, scaled @ weights.transpose(1, 2)

    def read_values(self, shares: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], values: torch.Tensor) -> torch.Tensor:
        """The second block's read, B x T x heads x d, from every range's :meth:`weigh_read` and
        the first update's value heads (B x T x heads x d)."""
        sums, image_part, weight_part = (torch.stack(items).sum(dim=0) for items in zip(*shares))
        image = self.image
        batch, heads = len(sums), image.heads
        rows = image.value_rows.rows(values).view(batch, -1, heads, image.value_offset.shape[-1])
        mixed = torch.einsum("bhtr,brhe->bthe", weight_part.view(batch, heads, self.tokens, -1), rows)
        mixed = mixed + image_part.view(heads, batch, self.tokens, -1).permute(1, 2, 0, 3)
        return mixed / sums.view(batch, heads, self.tokens, 1).transpose(1, 2) + image.value_offset

    def for_update(self, values: torch.Tensor, keys: torch.Tensor, second_values: torch.Tensor) -> SecondUpdatePrompts:
        """The second update's prompt side: its keys (scaled) and value heads, B x T x heads x d."""
        image = self.image
        batch, heads = len(keys), image.heads
        query_rows = image.query_rows.rows(values)
        rows = query_rows.shape[1]
        key_logits = torch.einsum("brhe,bthe->brht", query_rows.view(batch, rows, heads, -1), keys)
        return SecondUpdatePrompts(
            first=self,
            keys=_heads_first(keys),
            key_logits=key_logits.reshape(batch, rows, rows).transpose(1, 2),
            offsets=torch.einsum("bthe,he->bht", keys, image.query_offset).reshape(batch, -1, 1),
            normed_rows=image.normed_rows.rows(values),
            second_rows=image.second_rows.rows(second_values),
        )


@dataclass
class SecondUpdatePrompts:
    """A batch of prompts' side of the second update, made on :class:`FirstUpdatePrompts`."""

    first: FirstUpdatePrompts
    keys: torch.Tensor  # heads x (B x T) x d
    key_logits: torch.Tensor  # B x R x R
    offsets: torch.Tensor  # B x R x 1
    normed_rows: torch.Tensor  # M1 P G1 P, B x R x C
    second_rows: torch.Tensor  # M2 P + β1 P / heads, B x R x C

    def centred(self, part: range, weights: torch.Tensor, rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For the tokens in ``part``, given the first update's weights and inverse deviations
        there: the second update's attention weights (B x R x n) and the tokens it makes, less
        their means (Z2, B x n x C), ready for the second norm."""
        first = self.first
        image = first.image
        logits = first._image_products(self.keys, image.query_reads, part) + self.key_logits @ weights
        logits = logits.mul_(rstd.transpose(1, 2)).add_(first._image_products(self.keys, image.query_pe, part))
        batch, rows, count = logits.shape
        logits = (logits + self.offsets).view(batch, image.heads, first.tokens, count)
        second = torch.softmax(logits, dim=2).view(batch, rows, count)
        normed = image.normed[:, part.start : part.stop].expand(batch, -1, -1)
        centred = torch.baddbmm(normed, weights.transpose(1, 2), self.normed_rows).mul_(rstd)
        return second, centred.baddbmm_(second.transpose(1, 2), self.second_rows)

