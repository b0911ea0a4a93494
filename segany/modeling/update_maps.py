"""The two-way transformer's image updates, never applied to the image tokens.

Block l updates the image tokens by its image->token attention and a LayerNorm:
X_l = r_l ⊙ Z_l G_l + β_l, with Z_l = (X_(l-1) + A_l^T M_l) P, where A_l (R x N) are the
attention weights over R = heads x T rows M_l (the tokens' values through the output
projection), P = I - 11^T/C takes out each token's mean, r_l is each token's inverse deviation
and G_l, β_l the norm's gain and offset. Starting from one image's tokens X0,

    Z_1 = X0 P + A_1^T M_1 P,    Z_2 = r_1 ⊙ (X0 P G_1 P + A_1^T M_1 P G_1 P) + A_2^T (M_2 P + β_1 P / heads)

(each token's weights sum to 1 per head, so a constant rides on every row). Everything the
transformer does with X1 and X2 past the updates is linear in them but the norms: the second
block's read (keys, values) and its update's queries read X1, the final read (keys, values)
reads X2. A linear map of X_l is then made of the image's X0 P G_1 ... W^T (made once per image,
:class:`UpdateMaps`), the prompt's rows M_l ... W^T, and the weights and deviations per token:

    X1 W^T = r_1 ⊙ (X0 P G_1 W^T + A_1^T (M_1 P G_1 W^T)) + β_1 W^T

and the deviations come from Gram products: ||Z_1||^2 = ||X0 P||^2 + 2 A_1·(X0 P M_1^T) +
A_1^T (M_1 P)(M_1 P)^T A_1, with X0 P M_1^T made of the image's X0 P W_o1 and the values (the same
for Z_2 on the image's X0 P G_1 P). A prompt's products over the image tokens then have R = 56
inner terms a block, or a head's 16, instead of C = 256: with the upscaling's first product made
the same way, a vit_b prompt's arithmetic went from 1.61 to 0.90 GFLOP. The attention weights and deviations
the updates keep are what the upscaling's first product is made of too
(:mod:`segany.modeling.factored_image`). Same values as the direct computation, to float rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from segany.modeling.factored_image import ValueMap, centred_columns, per_head

# Per block: (attention weights B x R x n, inverse deviations B x n x 1) of a range of tokens.
Block = tuple[torch.Tensor, torch.Tensor]


def _heads_first(per_token: torch.Tensor) -> torch.Tensor:
    """B x T x heads x d as heads x (B x T) x d, for products against each head's image reads."""
    batch, tokens, heads, width = per_token.shape
    return per_token.permute(2, 0, 1, 3).reshape(heads, batch * tokens, width)


def _image_products(tokens: torch.Tensor, reads: torch.Tensor, part: range, count: int) -> torch.Tensor:
    """Per head, ``count`` tokens' rows (heads x (B x count) x d) against the image reads
    (heads x N x d) of the image tokens in ``part``: B x (heads x count) x n."""
    products = tokens @ reads[:, part.start : part.stop].transpose(1, 2)
    heads, _, pixels = products.shape
    return products.view(heads, -1, count, pixels).transpose(0, 1).reshape(-1, heads * count, pixels)


def _against(rows: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """Value rows (B x R x heads*d) against queries (B x T x heads x d), head by head:
    B x (heads x T) x R, what multiplies the attention weights (B x R x n) into logits."""
    batch, count, heads, width = queries.shape
    products = torch.einsum("brhe,bthe->bhtr", rows.view(batch, -1, heads, width), queries)
    return products.reshape(batch, heads * count, -1)


def _map_logits(image: torch.Tensor, against: Sequence[torch.Tensor], blocks: Sequence[Block]) -> torch.Tensor:
    """Logits (B x Rq x n) of queries against X_L W^T, up to its offset: r_L ⊙ (... r_1 ⊙
    (``image`` + K_1 A_1) ... + K_L A_L), ``against`` the K_l of :func:`_against`."""
    logits = image
    for index, ((weights, rstd), rows) in enumerate(zip(blocks, against, strict=True)):
        if index:
            logits = logits.mul_(blocks[index - 1][1].transpose(1, 2))
        logits = torch.baddbmm(logits, rows, weights)
    return logits.mul_(blocks[-1][1].transpose(1, 2))


def _weigh(
    exponentials: torch.Tensor, reads: torch.Tensor, part: range, blocks: Sequence[Block], count: int
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """A range's share of a read of X_L W^T with softmax ``exponentials`` (B x (heads x count) x n):
    their sums, their product with the image's ``reads`` (heads x (B x count) x d) and with
    each block's weights (B x Rq x R), each weighed by the deviations that scale them."""
    scaled, products = exponentials, []
    for weights, rstd in reversed(blocks):
        scaled = scaled * rstd.transpose(1, 2)
        products.append(scaled @ weights.transpose(1, 2))
    heads = reads.shape[0]
    by_head = scaled.view(len(scaled), heads, count, -1).transpose(0, 1).reshape(heads, -1, scaled.shape[-1])
    return exponentials.sum(dim=-1), by_head @ reads[:, part.start : part.stop], products[::-1]


def _read(
    shares: Sequence[tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]],
    rows: Sequence[torch.Tensor],
    offset: torch.Tensor,
    count: int,
) -> torch.Tensor:
    """The value heads read (B x count x heads x d) from every range's :func:`_weigh`, the
    blocks' value rows through the map (B x R x heads*d each) and the map's ``offset`` (heads x d)."""
    sums = torch.stack([share[0] for share in shares]).sum(dim=0)
    image = torch.stack([share[1] for share in shares]).sum(dim=0)
    batch, (heads, width) = len(sums), offset.shape
    mixed = image.view(heads, batch, count, width).permute(1, 2, 0, 3)
    for index, block_rows in enumerate(rows):
        weighed = torch.stack([share[2][index] for share in shares]).sum(dim=0).view(batch, heads, count, -1)
        mixed = mixed + torch.einsum("bhtr,brhe->bthe", weighed, block_rows.view(batch, -1, heads, width))
    return mixed / sums.view(batch, heads, count, 1).transpose(1, 2) + offset


@dataclass
class UpdateMaps:
    """One image's side of a two-block transformer's updates and of the reads of them."""

    # The first update: its norm's deviations, the second block's read and update queries of X1.
    centred_squares: torch.Tensor  # ||X0 P||^2, 1 x N
    out_reads: tuple[torch.Tensor, torch.Tensor]  # X0 P against M1 P (ValueMap.reads)
    key_reads: torch.Tensor  # X0 P G1 W_k2^T, heads x N x d
    key_pe: torch.Tensor  # PE W_k2^T
    value_reads: torch.Tensor  # X0 P G1 W_v2^T
    query_reads: torch.Tensor  # X0 P G1 W_q2^T
    query_pe: torch.Tensor  # PE W_q2^T
    centred_rows: ValueMap  # M1 P
    key_rows: ValueMap  # M1 P G1 W_k2^T
    value_rows: ValueMap  # M1 P G1 W_v2^T
    query_rows: ValueMap  # M1 P G1 W_q2^T
    value_offset: torch.Tensor  # β1 W_v2^T + b_v2, heads x d
    query_offset: torch.Tensor  # β1 W_q2^T + b_q2, heads x d
    # The second update (Z2 from X0 P G1 P): its norm's deviations, the final read of X2.
    normed_squares: torch.Tensor  # ||X0 P G1 P||^2, 1 x N
    normed_first_reads: tuple[torch.Tensor, torch.Tensor]  # X0 P G1 P against M1 P G1 P
    normed_second_reads: tuple[torch.Tensor, torch.Tensor]  # X0 P G1 P against M2 P + β1 P / heads
    final_key_reads: torch.Tensor  # X0 P G1 P G2 W_k3^T, heads x N x d
    final_key_pe: torch.Tensor  # PE W_k3^T
    final_value_reads: torch.Tensor  # X0 P G1 P G2 W_v3^T
    normed_rows: ValueMap  # M1 P G1 P
    second_rows: ValueMap  # M2 P + β1 P / heads
    final_key_rows: tuple[ValueMap, ValueMap]  # the two blocks' rows through G2 W_k3^T
    final_value_rows: tuple[ValueMap, ValueMap]  # through G2 W_v3^T
    final_value_offset: torch.Tensor  # β2 W_v3^T + b_v3, heads x d
    heads: int
    width: int  # C, what the norms average over
    eps: tuple[float, float]  # the two norms'

    @classmethod
    def of(
        cls, first: nn.Module, second: nn.Module, final: nn.Module, keys: torch.Tensor, key_pe: torch.Tensor
    ) -> UpdateMaps:
        """From the two :class:`TwoWayAttentionBlock` s, the final :class:`TokenAttention`, and the
        image tokens (1 x N x C) and their PE every prompt starts from."""
        update, norm = first.cross_attn_image_to_token, first.norm4
        read, second_update, second_norm = (
            second.cross_attn_token_to_image, second.cross_attn_image_to_token, second.norm4
        )
        heads = update.num_heads
        centred = keys - keys.mean(dim=-1, keepdim=True)
        gain, second_gain = norm.weight[:, None], second_norm.weight[:, None]
        centring = centred_columns(torch.eye(keys.shape[-1], dtype=keys.dtype, device=keys.device))
        to_key, to_value, to_query = (centred_columns(gain * projection.weight.t()) for projection in (
            read.k_proj, read.v_proj, second_update.q_proj))
        to_normed = centred_columns(gain * centring)
        to_final_key, to_final_value = (
            second_gain * projection.weight.t() for projection in (final.k_proj, final.v_proj)
        )
        normed = centred @ to_normed
        centred_rows = ValueMap.of(update.out_proj, heads, centring)
        normed_rows = ValueMap.of(update.out_proj, heads, to_normed)
        second_rows = ValueMap.of(second_update.out_proj, heads, centring, extra_bias=norm.bias)

        def through_both(matrix: torch.Tensor) -> tuple[ValueMap, ValueMap]:
            return (
                ValueMap.of(update.out_proj, heads, to_normed @ matrix),
                ValueMap.of(second_update.out_proj, heads, centring @ matrix, extra_bias=norm.bias),
            )

        return cls(
            centred_squares=centred.square().sum(dim=-1),
            out_reads=centred_rows.reads(centred),
            key_reads=per_head(centred @ to_key, heads),
            key_pe=per_head(key_pe @ read.k_proj.weight.t(), heads),
            value_reads=per_head(centred @ to_value, heads),
            query_reads=per_head(centred @ to_query, heads),
            query_pe=per_head(key_pe @ second_update.q_proj.weight.t(), heads),
            centred_rows=centred_rows,
            key_rows=ValueMap.of(update.out_proj, heads, to_key),
            value_rows=ValueMap.of(update.out_proj, heads, to_value),
            query_rows=ValueMap.of(update.out_proj, heads, to_query),
            value_offset=(norm.bias @ read.v_proj.weight.t() + read.v_proj.bias).view(heads, -1),
            query_offset=(norm.bias @ second_update.q_proj.weight.t() + second_update.q_proj.bias).view(heads, -1),
            normed_squares=normed.square().sum(dim=-1),
            normed_first_reads=normed_rows.reads(normed),
            normed_second_reads=second_rows.reads(normed),
            final_key_reads=per_head(normed @ to_final_key, heads),
            final_key_pe=per_head(key_pe @ final.k_proj.weight.t(), heads),
            final_value_reads=per_head(normed @ to_final_value, heads),
            normed_rows=normed_rows,
            second_rows=second_rows,
            final_key_rows=through_both(to_final_key),
            final_value_rows=through_both(to_final_value),
            final_value_offset=(second_norm.bias @ final.v_proj.weight.t() + final.v_proj.bias).view(heads, -1),
            heads=heads,
            width=keys.shape[-1],
            eps=(norm.eps, second_norm.eps),
        )

    def for_prompts(self, values: torch.Tensor, read_queries: torch.Tensor) -> FirstUpdatePrompts:
        """The prompts' side of the first update, from its value heads and the second block's read
        queries (B x T x heads x d each, the queries scaled for the logits)."""
        centred_rows = self.centred_rows.rows(values)
        return FirstUpdatePrompts(
            image=self,
            values=values,
            by_head=_heads_first(values),
            read_queries=_heads_first(read_queries),
            gram=centred_rows @ centred_rows.transpose(1, 2),
            key_rows=_against(self.key_rows.rows(values), read_queries),
        )


def _squares(
    squares: torch.Tensor, reads: tuple[torch.Tensor, torch.Tensor], by_head: torch.Tensor, part: range,
    weights: torch.Tensor, gram: torch.Tensor,
) -> torch.Tensor:
    """||S + A^T V||^2 (B x n) for image tokens S whose squares and :meth:`ValueMap.reads` of V
    are given, value heads ``by_head`` (heads x (B x T) x d), weights A and Gram V V^T."""
    count = weights.shape[1] // len(by_head)
    cross = _image_products(by_head, reads[0], part, count)
    constant = squares[:, part.start : part.stop] + 2 * reads[1][:, part.start : part.stop]
    return constant + (weights * (2 * cross + gram @ weights)).sum(dim=1)


@dataclass
class FirstUpdatePrompts:
    """A batch of prompts' side of the first update (see :class:`UpdateMaps`)."""

    image: UpdateMaps
    values: torch.Tensor  # the first update's value heads, B x T x heads x d
    by_head: torch.Tensor  # the same, heads x (B x T) x d
    read_queries: torch.Tensor  # the second block's read queries, heads x (B x T) x d
    gram: torch.Tensor  # (M1 P)(M1 P)^T, B x R x R
    key_rows: torch.Tensor  # M1 P G1 W_k2^T against the read queries (_against)

    def first_read(self, part: range, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For the tokens in ``part``, given the first update's attention weights there (B x R x n):
        the first norm's inverse deviations (B x n x 1) and the second block's read logits
        (B x R x n, up to a constant per row, which its softmax over the image drops)."""
        image, count = self.image, self.values.shape[1]
        squares = _squares(image.centred_squares, image.out_reads, self.by_head, part, weights, self.gram)
        rstd = torch.rsqrt(squares / image.width + image.eps[0]).unsqueeze(-1)
        logits = _map_logits(
            _image_products(self.read_queries, image.key_reads, part, count), [self.key_rows], [(weights, rstd)]
        )
        return rstd, logits.add_(_image_products(self.read_queries, image.key_pe, part, count))

    def weigh_read(self, exponentials: torch.Tensor, part: range, weights: torch.Tensor, rstd: torch.Tensor) -> tuple:
        """One range's share of the second block's read (:func:`_weigh`)."""
        return _weigh(exponentials, self.image.value_reads, part, [(weights, rstd)], self.values.shape[1])

    def read_values(self, shares: Sequence[tuple]) -> torch.Tensor:
        """The second block's read, value heads B x T x heads x d."""
        image = self.image
        return _read(shares, [image.value_rows.rows(self.values)], image.value_offset, self.values.shape[1])

    def for_update(self, keys: torch.Tensor, values: torch.Tensor, final_queries: torch.Tensor) -> SecondUpdatePrompts:
        """The second update's prompt side: its keys (scaled) and value heads, and the final
        read's queries (scaled), B x T x heads x d each."""
        image = self.image
        batch = len(keys)
        normed_rows, second_rows = image.normed_rows.rows(self.values), image.second_rows.rows(values)
        both_values = (self.values, values)
        final_keys = [rows.rows(block_values) for rows, block_values in zip(image.final_key_rows, both_values)]
        final_values = [rows.rows(block_values) for rows, block_values in zip(image.final_value_rows, both_values)]
        return SecondUpdatePrompts(
            first=self,
            by_head=_heads_first(values),
            keys=_heads_first(keys),
            key_rows=_against(image.query_rows.rows(self.values), keys),
            offsets=torch.einsum("bthe,he->bht", keys, image.query_offset).reshape(batch, -1, 1),
            normed_gram=normed_rows @ normed_rows.transpose(1, 2),
            cross_gram=second_rows @ normed_rows.transpose(1, 2),
            second_gram=second_rows @ second_rows.transpose(1, 2),
            final_queries=_heads_first(final_queries),
            final_key_rows=[_against(rows, final_queries) for rows in final_keys],
            final_value_rows=final_values,
            final_count=final_queries.shape[1],
        )


@dataclass
class SecondUpdatePrompts:
    """A batch of prompts' side of the second update and the final read."""

    first: FirstUpdatePrompts
    by_head: torch.Tensor  # the second update's value heads, heads x (B x T) x d
    keys: torch.Tensor  # its keys, heads x (B x T) x d
    key_rows: torch.Tensor  # M1 P G1 W_q2^T against its keys (_against)
    offsets: torch.Tensor  # (β1 W_q2^T + b_q2) against its keys, B x R x 1
    normed_gram: torch.Tensor  # (M1 P G1 P)(M1 P G1 P)^T, B x R x R
    cross_gram: torch.Tensor  # (M2 P + β1 P / heads)(M1 P G1 P)^T
    second_gram: torch.Tensor  # (M2 P + β1 P / heads)(M2 P + β1 P / heads)^T
    final_queries: torch.Tensor  # heads x (B x T3) x d
    final_key_rows: list[torch.Tensor]  # each block's rows through G2 W_k3^T against the final queries
    final_value_rows: list[torch.Tensor]  # each block's rows through G2 W_v3^T, B x R x heads*d
    final_count: int

    def second_update(
        self, part: range, weights: torch.Tensor, rstd: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For the tokens in ``part``, given the first update's weights and deviations there: the
        second update's attention weights (B x R x n), its norm's inverse deviations (B x n x 1),
        and the final read's logits (B x (heads x T3) x n, up to a constant per row)."""
        first = self.first
        image, count = first.image, first.values.shape[1]
        logits = _image_products(self.keys, image.query_reads, part, count)
        logits = _map_logits(logits, [self.key_rows], [(weights, rstd)])
        logits = logits.add_(_image_products(self.keys, image.query_pe, part, count)).add_(self.offsets)
        batch, rows, pixels = logits.shape
        second = torch.softmax(logits.view(batch, image.heads, count, pixels), dim=2).view(batch, rows, pixels)
        normed = _squares(
            image.normed_squares, image.normed_first_reads, first.by_head, part, weights, self.normed_gram
        )
        cross = _image_products(self.by_head, image.normed_second_reads[0], part, count) + self.cross_gram @ weights
        cross = image.normed_second_reads[1][:, part.start : part.stop] + (second * cross).sum(dim=1)
        rows_only = (second * (self.second_gram @ second)).sum(dim=1)
        scale = rstd[..., 0]
        squares = scale.square() * normed + 2 * scale * cross + rows_only
        second_rstd = torch.rsqrt(squares / image.width + image.eps[1]).unsqueeze(-1)
        blocks = [(weights, rstd), (second, second_rstd)]
        final = _image_products(self.final_queries, image.final_key_reads, part, self.final_count)
        final = _map_logits(final, self.final_key_rows, blocks)
        final = final.add_(_image_products(self.final_queries, image.final_key_pe, part, self.final_count))
        return second, second_rstd, final

    def weigh_final(self, exponentials: torch.Tensor, part: range, blocks: Sequence[Block]) -> tuple:
        """One range's share of the final read (:func:`_weigh`), given both updates' ``blocks``."""
        return _weigh(exponentials, self.first.image.final_value_reads, part, blocks, self.final_count)

    def final_values(self, shares: Sequence[tuple]) -> torch.Tensor:
        """The final read, value heads B x T3 x heads x d."""
        return _read(shares, self.final_value_rows, self.first.image.final_value_offset, self.final_count)
