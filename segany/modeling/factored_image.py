"""A linear map of the mask decoder's image tokens, made from a per-image part and the prompt's
attention weights instead of from the tokens.

A two-way block changes the image tokens X (N x C) only by its image->token attention and a
LayerNorm: Y = X + A^T M, with A (R x N) the attention weights over R = heads x T rows M
(R x C: the prompt tokens' values through the output projection, :class:`ImageUpdate`), then
X' = r ⊙ Z G + β, where Z = Y P is Y with each token's mean taken out (P = I - 11^T/C),
r each token's inverse deviation, G = diag(g) and β the norm's gain and offset. So

    Z_1 = X0 P + A_1^T M_1 P,    Z_l = r_(l-1) ⊙ Z_(l-1) G_(l-1) P + β_(l-1) P + A_l^T M_l P

where X0 are the tokens every prompt starts from (one image's). For a map (W, b) of the
tokens after blocks 1..L, let Ψ_L = G_L W^T, Φ_l = P Ψ_l and Ψ_(l-1) = G_(l-1) Φ_l. Then
t_l = Z_l Ψ_l follows

    t_1 = X0 Φ_1 + A_1^T C_1,    t_l = r_(l-1) ⊙ t_(l-1) + A_l^T C_l,    X_L W^T + b = r_L ⊙ t_L + β_L W^T + b

with C_l = M_l Φ_l + β_(l-1) Φ_l / heads (each token's weights sum to 1 per head, so the
offset rides on every row). X0 Φ_1 is made once per image (:class:`FactoredMap`), and per
prompt what is left is products over R = 56 inner terms a block instead of C = 256, from
the attention weights and LayerNorm statistics the transformer computes anyway
(:class:`FactoredProduct`). The decoder makes its largest per-prompt product, the upscaling's
first transposed convolution, this way; values agree with the direct product to float
rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class RangeFactors:
    """What one range of image tokens (``tokens``) kept of each block: the attention weights
    (B x R x n) and the LayerNorm's inverse deviations (B x n x 1)."""

    tokens: range
    weights: list[torch.Tensor]
    rstd: list[torch.Tensor]

    def select(self, index: torch.Tensor) -> RangeFactors:
        return RangeFactors(self.tokens, [w[index] for w in self.weights], [r[index] for r in self.rstd])


def centred_columns(matrix: torch.Tensor) -> torch.Tensor:
    """P @ ``matrix`` (C x K): each column without its mean."""
    return matrix - matrix.mean(dim=0)


def per_head(tokens: torch.Tensor, heads: int) -> torch.Tensor:
    """Image tokens' features (1 x N x heads*d) as heads x N x d."""
    _, count, width = tokens.shape
    return tokens[0].view(count, heads, width // heads).transpose(0, 1).contiguous()


@dataclass
class ValueMap:
    """A matrix Π (C x K) seen from an update's value rows: M Π = per head v_h (W_o,h^T Π) +
    (b_o + extra) Π / heads."""

    heads: torch.Tensor  # heads x d x K
    bias: torch.Tensor  # K

    @classmethod
    def of(
        cls, out_proj: nn.Linear, heads: int, matrix: torch.Tensor, extra_bias: torch.Tensor | None = None
    ) -> ValueMap:
        """``extra_bias`` (C) rides on every row with the output projection's bias: a constant of
        the update (each token's weights sum to 1 per head)."""
        out_heads = out_proj.weight.view(out_proj.out_features, heads, -1).permute(1, 2, 0)
        bias = out_proj.bias if extra_bias is None else out_proj.bias + extra_bias
        return cls(out_heads @ matrix, (bias @ matrix) / heads)

    def rows(self, values: torch.Tensor) -> torch.Tensor:
        """M Π (B x R x K) for value heads ``values`` (B x T x heads x d), rows (head, token)."""
        rows = torch.einsum("bthe,hek->bhtk", values, self.heads) + self.bias
        return rows.reshape(len(values), -1, rows.shape[-1])

    def reads(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image tokens' (1 x N x K) products with every row, T_i·(M Π)_(h,t): per head the part
        that meets v_h (heads x N x d), and the bias's part summed over the heads (1 x N)."""
        heads = len(self.heads)
        return per_head(tokens @ self.heads.permute(2, 0, 1).flatten(1), heads), tokens @ (self.bias * heads)


@dataclass
class FactoredMap:
    """A linear map (W, b) of one image's tokens after the blocks, made ready for prompts."""

    base: torch.Tensor  # X0 Φ_1, Bi x N x D
    blocks: list[ValueMap]  # each block's value rows through Φ_l
    offset: torch.Tensor  # β_L W^T + b, D

    @classmethod
    def of(
        cls,
        tokens: torch.Tensor,
        updates: Sequence[tuple[nn.Linear, int]],
        norms: Sequence[nn.LayerNorm],
        weight: torch.Tensor,
        bias: torch.Tensor,
    ) -> FactoredMap:
        """The map by ``weight`` (D x C) and ``bias`` of the ``tokens`` (Bi x N x C) every prompt
        starts from, through blocks whose image updates have these (output projection, heads)
        and end with these LayerNorms."""
        psi = norms[-1].weight[:, None] * weight.t()
        blocks = []
        for index in reversed(range(len(norms))):
            phi = centred_columns(psi)
            previous_offset = norms[index - 1].bias if index > 0 else None
            blocks.append(ValueMap.of(*updates[index], phi, extra_bias=previous_offset))
            if index > 0:
                psi = norms[index - 1].weight[:, None] * phi
        return cls(base=tokens @ phi, blocks=blocks[::-1], offset=torch.addmv(bias, weight, norms[-1].bias))

    def columns(self, head_values: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Each block's C_l (B x R x D) for a batch of prompts whose blocks' values per head were
        ``head_values`` (B x T x heads x head_dim each), rows in the attention weights' order."""
        return [block.rows(values) for block, values in zip(self.blocks, head_values, strict=True)]


@dataclass
class FactoredProduct:
    """A linear map of the image tokens of a batch of prompts, X W^T + b, in factors: the image's
    ``base`` (Bi x N x D, Bi 1 or B), what each range of tokens kept (``parts``), each block's
    ``columns`` (B x R x D) and the ``offset`` (D). The columns are made for the whole batch at
    once, so that a prompt's values do not depend on which prompts are selected later."""

    base: torch.Tensor
    parts: list[RangeFactors]
    columns: list[torch.Tensor]
    offset: torch.Tensor

    @classmethod
    def of(cls, parts: list[RangeFactors], head_values: Sequence[torch.Tensor], map_: FactoredMap) -> FactoredProduct:
        """The map of tokens whose ranges kept ``parts`` and whose blocks' values per head were
        ``head_values``."""
        return cls(map_.base, parts, map_.columns(head_values), map_.offset)

    def window(self, grid: tuple[int, int], rows: range, columns: range) -> FactoredProduct:
        """Only the tokens in ``rows`` x ``columns`` of the ``grid`` (H, W) of tokens."""

        def joined(tensors: list[torch.Tensor], dim: int) -> torch.Tensor:
            return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=dim)

        def cut(tensor: torch.Tensor, dim: int) -> torch.Tensor:
            """``tensor``'s tokens (along ``dim``, 1 or 2) in the window."""
            shape = tensor.shape
            tokens = tensor.view(*shape[:dim], *grid, *shape[dim + 1 :])
            tokens = tokens.narrow(dim, rows.start, len(rows)).narrow(dim + 1, columns.start, len(columns))
            return tokens.reshape(*shape[:dim], len(rows) * len(columns), *shape[dim + 1 :])

        blocks = range(len(self.columns))
        weights = [cut(joined([part.weights[block] for part in self.parts], 2), 2) for block in blocks]
        rstd = [cut(joined([part.rstd[block] for part in self.parts], 1), 1) for block in blocks]
        part = RangeFactors(range(len(rows) * len(columns)), weights, rstd)
        return FactoredProduct(cut(self.base, 1), [part], self.columns, self.offset)

    def select(self, index: torch.Tensor) -> FactoredProduct:
        """The prompts at ``index`` (indices or a bool mask over the batch)."""
        base = self.base if len(self.base) == 1 else self.base[index]
        parts = [part.select(index) for part in self.parts]
        return FactoredProduct(base, parts, [columns[index] for columns in self.columns], self.offset)

    def of_tokens(self, prompt: int, first: int, count: int) -> torch.Tensor:
        """The product for ``count`` consecutive tokens from ``first``, of one prompt: 1 x count x D."""
        stop = first + count
        pieces = [(part, max(first, part.tokens.start), min(stop, part.tokens.stop)) for part in self.parts]
        pieces = [(part, start, end) for part, start, end in pieces if start < end]
        if len(pieces) == 1:
            return self._piece(prompt, *pieces[0]).unsqueeze(0)
        out = self.base.new_empty(count, self.base.shape[-1])
        for part, start, end in pieces:
            self._piece(prompt, part, start, end, out=out[start - first : end - first])
        return out.unsqueeze(0)

    def _piece(
        self, prompt: int, part: RangeFactors, start: int, end: int, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The product for tokens ``start``..``end`` (within ``part``) of one prompt: count x D."""
        local = range(start - part.tokens.start, end - part.tokens.start)
        base = self.base[0 if len(self.base) == 1 else prompt, start:end]
        total = None
        for block, columns in enumerate(self.columns):
            weights = part.weights[block][prompt, :, local.start : local.stop].t()
            if total is None:
                total = torch.addmm(base, weights, columns[prompt])
            else:
                total.mul_(part.rstd[block - 1][prompt, local.start : local.stop]).addmm_(weights, columns[prompt])
        return torch.addcmul(self.offset, part.rstd[-1][prompt, local.start : local.stop], total, out=out)
