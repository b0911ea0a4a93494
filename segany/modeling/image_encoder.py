"""The ViT image encoder: patch embedding, windowed and global attention blocks, conv neck.

It runs once per image and is where almost all of SAM's compute goes. Attention never
materialises the full attention matrix: the decomposed relative-position bias is built one head
(on GPUs, all heads) and a band of query rows at a time, and goes as an additive mask into
``scaled_dot_product_attention``, or, for global blocks in eager CPU inference, onto the band's
logits between two oneDNN products (:mod:`segany.modeling.cpu_linear`), which run faster there.
Windowed blocks project only the real tokens, not the padding.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch.nn import functional as F

from segany.modeling.blocks import DropPath, FeedForward, LayerNorm2d
from segany.modeling.cpu_linear import linear, onednn_inference
from segany.modeling.streams import cpu_streams, map_in_streams

# The relative-position bias is queries x keys per head (805 MB for vit_b's global blocks); it is
# built and consumed one head and a band of query rows at a time, so that each piece stays in
# the core's L2 cache instead of going through memory twice.
MASK_CHUNK_BYTES = 2 * 2**20
# In float32 eager inference on the CPU, each (image, head) pair whose attention is at least this
# many multiply-adds runs as two oneDNN products and a softmax, pairs shared between CPU streams:
# a vit_b global block's attention took 0.40 s instead of SDPA's 0.51 (min of 8, 2 cores). The
# 14 x 14 windows (2.5M each) stay in one batched SDPA call, where per-call costs are shared.
ONEDNN_ATTENTION_MIN_MULTIPLY_ADDS = 2**22
# Elsewhere (GPUs) each SDPA call is a kernel launch or several, and one per head and L2-sized band
# (1,536 calls for vit_b's global blocks) made the float32 encoder 15x slower than the official one
# on an H200: there all heads go in one call, in bands of query rows whose bias stays under this.
GPU_MASK_CHUNK_BYTES = 256 * 2**20


def sdpa_layout(device: torch.device, heads: int) -> tuple[int, int]:
    """(heads per SDPA call, bias bytes per call) on ``device``: one head in L2-sized bands on the
    CPU, all heads in large bands elsewhere."""
    return (1, MASK_CHUNK_BYTES) if device.type == "cpu" else (heads, GPU_MASK_CHUNK_BYTES)


def relative_position_table(rel_pos: torch.Tensor, size: int) -> torch.Tensor:
    """Expand a learned (2*size-1, C) table into per-pair embeddings (size, size, C).

    Entry [i, j] holds the embedding of the offset i - j between query row i and key row j.
    """
    if rel_pos.shape[0] != 2 * size - 1:
        raise ValueError(
            f"relative position table has {rel_pos.shape[0]} rows, expected {2 * size - 1} for a "
            f"{size}-token side: the image size does not match the one the encoder was built for"
        )
    offsets = torch.arange(size, device=rel_pos.device)
    index = offsets[:, None] - offsets[None, :] + (size - 1)
    return rel_pos[index]


class PatchEmbed(nn.Module):
    """Non-overlapping patches to tokens with one strided convolution; output is BxHxWxC."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Contiguous: the residual stream keeps its first tensor's layout through every add, and
        # each LayerNorm would otherwise copy a channels-first one (24 copies in vit_b).
        return self.proj(x).permute(0, 2, 3, 1).contiguous()


class RelPosAttention(nn.Module):
    """Multi-head self-attention over a 2-D token grid with decomposed relative positions."""

    def __init__(self, dim: int, num_heads: int, grid_size: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * grid_size - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * grid_size - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(self.attend(linear(x, self.qkv)), self.proj)

    def attend(self, qkv: torch.Tensor) -> torch.Tensor:
        """Attention over projected BxHxWx3C tokens, before the output projection.

        Split from :meth:`forward` so that windowed blocks can project only the real tokens and
        attend over padded tiles.
        """
        batch, height, width, channels = qkv.shape
        dim = channels // 3
        heads = self.num_heads
        qkv = qkv.reshape(batch, height * width, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each B x heads x N x head_dim
        rel_h, rel_w = self._relative_position_terms(q, height, width)
        tokens = height * width
        out = q.new_empty(batch, tokens, heads, dim // heads)
        products = tokens * tokens * (dim // heads)
        if onednn_inference(q) and products >= ONEDNN_ATTENTION_MIN_MULTIPLY_ADDS:
            pairs = [(image, head) for image in range(batch) for head in range(heads)]
            work = partial(self._attend_pair, q, k, v, rel_h, rel_w, out)
            with cpu_streams(q, tasks=len(pairs)) as streams:
                map_in_streams(work, pairs, streams)
            return out.view(batch, height, width, dim)
        heads_per_call, budget = sdpa_layout(q.device, heads)
        rows = max(1, budget // (q.element_size() * batch * heads_per_call * width * tokens))
        for first in range(0, heads, heads_per_call):
            group = slice(first, first + heads_per_call)
            for top in range(0, height, rows):
                bottom = min(height, top + rows)
                band = slice(top * width, bottom * width)
                bias = rel_h[:, group, top:bottom, :, :, None] + rel_w[:, group, top:bottom, :, None, :]
                attended = F.scaled_dot_product_attention(
                    q[:, group, band],
                    k[:, group],
                    v[:, group],
                    attn_mask=bias.reshape(batch, bias.shape[1], (bottom - top) * width, tokens),
                )
                out[:, band, group] = attended.transpose(1, 2)
        return out.view(batch, height, width, dim)

    @staticmethod
    def _attend_pair(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        rel_h: torch.Tensor,
        rel_w: torch.Tensor,
        out: torch.Tensor,
        pair: tuple[int, int],
    ) -> None:
        """One (image, head) pair's attention into ``out`` (B x N x heads x head_dim), a band of
        query rows at a time: logits and weighted values are oneDNN products
        (:mod:`segany.modeling.cpu_linear`), with keys and values copied out of the interleaved
        projections once; the bias is added to the band's logits in place."""
        image, head = pair
        height, width = rel_h.shape[2:4]
        tokens = height * width
        keys, values_t = k[image, head].contiguous(), v[image, head].t().contiguous()
        queries = q[image, head] * q.shape[-1] ** -0.5
        rows = max(1, MASK_CHUNK_BYTES // (q.element_size() * width * tokens))
        for top in range(0, height, rows):
            bottom = min(height, top + rows)
            band = slice(top * width, bottom * width)
            logits = linear(queries[band], (keys, None))
            grid = logits.view(bottom - top, width, height, width)
            grid.add_(rel_h[image, head, top:bottom, :, :, None]).add_(rel_w[image, head, top:bottom, :, None, :])
            out[image, band, head] = linear(torch.softmax(logits, dim=-1), (values_t, None))

    def _relative_position_terms(
        self, q: torch.Tensor, height: int, width: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The two halves of the decomposed bias, q·R_h and q·R_w, each B x heads x H x W x side.

        The full bias for query (h, w) and key (h', w') is rel_h[..., h, w, h'] + rel_w[..., h, w, w'].
        """
        batch, heads, _, head_dim = q.shape
        grid_q = q.reshape(batch, heads, height, width, head_dim)
        table_h = relative_position_table(self.rel_pos_h, height).to(q.dtype)
        table_w = relative_position_table(self.rel_pos_w, width).to(q.dtype)
        rel_h = torch.einsum("bnhwc,hkc->bnhwk", grid_q, table_h)
        rel_w = torch.einsum("bnhwc,wkc->bnhwk", grid_q, table_w)
        return rel_h, rel_w


def partition_windows(
    x: torch.Tensor, window: int, fill: torch.Tensor | None = None
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad a BxHxWxC grid to multiples of ``window`` and cut it into window x window tiles.

    Padding tokens are zeros, or the per-channel vector ``fill``.
    """
    batch, height, width, channels = x.shape
    pad_h = (window - height % window) % window
    pad_w = (window - width % window) % window
    if pad_h or pad_w:
        if fill is None:
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        else:
            grid = fill.expand(batch, height + pad_h, width + pad_w, channels).clone()
            grid[:, :height, :width] = x
            x = grid
    padded_h, padded_w = height + pad_h, width + pad_w
    x = x.view(batch, padded_h // window, window, padded_w // window, window, channels)
    tiles = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, channels)
    return tiles, (padded_h, padded_w)


def merge_windows(tiles: torch.Tensor, window: int, padded: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`partition_windows`: stitch tiles back and drop the padding."""
    padded_h, padded_w = padded
    channels = tiles.shape[-1]
    batch = tiles.shape[0] // ((padded_h // window) * (padded_w // window))
    x = tiles.view(batch, padded_h // window, padded_w // window, window, window, channels)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch, padded_h, padded_w, channels)
    return x[:, : size[0], : size[1], :]


class EncoderBlock(nn.Module):
    """Pre-norm transformer block; attends within windows, or globally when ``window_size`` is 0."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        grid_size: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = RelPosAttention(dim, num_heads, window_size if window_size > 0 else grid_size)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = FeedForward(dim, int(dim * mlp_ratio), nn.GELU)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self._attend(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        if self.window_size == 0:
            return self.attn(x)
        # The reference pads the normalised tokens with zeros before projecting them: project
        # the real tokens only, and pad with what a zero token projects to (the qkv bias).
        qkv = linear(x, self.attn.qkv)
        fill = self.attn.qkv(x.new_zeros(1, x.shape[-1]))[0]
        tiles, padded = partition_windows(qkv, self.window_size, fill)
        attended = merge_windows(self.attn.attend(tiles), self.window_size, padded, x.shape[1:3])
        return linear(attended, self.attn.proj)


class ImageEncoderViT(nn.Module):
    """ViT backbone + neck: a padded img_size² image to an out_chans x (img_size/patch)² embedding."""

    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        window_size: int = 14,
        global_attn_indexes: tuple[int, ...] = (),
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        drop_rates = [drop_path_rate * index / max(depth - 1, 1) for index in range(depth)]
        self.blocks = nn.ModuleList(
            EncoderBlock(
                embed_dim,
                num_heads,
                window_size=0 if index in global_attn_indexes else window_size,
                grid_size=grid,
                mlp_ratio=mlp_ratio,
                drop_path=drop_rates[index],
            )
            for index in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))
