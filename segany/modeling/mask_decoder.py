"""Mask decoder: output tokens read the prompted image, then hypernetworks turn them into masks.

One IoU token and four mask tokens are prepended to the prompt tokens. After the two-way
transformer, each mask token's MLP produces the weights of a dynamic linear classifier over
the 4x-upscaled image features; the IoU token predicts each mask's quality. Token 0's mask
is the single-mask answer, tokens 1-3 the three ambiguity-aware answers.

Decoding is split in two (:meth:`MaskDecoder.decode`, then :meth:`MaskDecoder.upscale_masks`)
because the IoU predictions need only the transformer, while the upscaling is half of the
work: a caller that drops prompts by predicted IoU (the automatic generator) upscales only
the survivors. The upscaling runs on the transformer's token layout (pixels x channels):
its kernel-2, stride-2 transposed convolutions give every input pixel its own 2x2 output
block, so each is a matrix product, and pixels are put in image order only once, on the masks.
When a predictor keeps the image side, the first product is made from a per-image base and
the prompt's attention weights instead of from the image tokens
(:mod:`segany.modeling.factored_image`): 56 inner terms a block instead of 256.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from segany.modeling.blocks import LayerNorm2d, MultiLayerPerceptron
from segany.modeling.cpu_linear import linear
from segany.modeling.factored_image import FactoredMap, FactoredProduct
from segany.modeling.streams import capturing_graph, eager_cpu_inference, in_streams, split_range
from segany.modeling.transformer import ImageSide, TwoWayTransformer, take_tokens
from segany.modeling.weight_state import weights_state

# Image tokens upscaled at once on the CPU: 1,024 tokens' features (6 MB) stay in the cache.
UPSCALE_CHUNK_TOKENS = 1024
# Low-res logits per image token along each axis: two stride-2 transposed convolutions.
LOW_RES_PER_TOKEN = 4


@dataclass
class DecodedPrompts:
    """Transformer outputs for a batch of prompts: IoU predictions now, masks on demand."""

    hyper_in: torch.Tensor  # B x M x C/8, each mask's classifier over the upscaled features
    image_tokens: torch.Tensor | None  # B x HW x C; None when the first upscaling product comes in factors
    iou_predictions: torch.Tensor  # B x M
    grid: tuple[int, int]  # H, W of the image tokens
    # The upscaling's first product of the image tokens, in factors, when the image side keeps
    # its base (CPU inference; segany.modeling.factored_image).
    first_upscaling: FactoredProduct | None = None

    def window(self, rows: range, columns: range) -> DecodedPrompts:
        """The prompts with only the image tokens in ``rows`` x ``columns`` of the grid, whose
        :meth:`MaskDecoder.upscale_masks` is that window of the masks' (each token makes
        its own 4 x 4 block of low-res logits)."""
        tokens = None
        if self.image_tokens is not None:
            tokens = self.image_tokens.view(len(self.image_tokens), *self.grid, -1)
            tokens = tokens[:, rows.start : rows.stop, columns.start : columns.stop].flatten(1, 2)
        return DecodedPrompts(
            hyper_in=self.hyper_in,
            image_tokens=tokens,
            iou_predictions=self.iou_predictions,
            grid=(len(rows), len(columns)),
            first_upscaling=(
                None if self.first_upscaling is None else self.first_upscaling.window(self.grid, rows, columns)
            ),
        )

    def select(self, index: torch.Tensor) -> DecodedPrompts:
        """The prompts at ``index`` (indices or a bool mask over the batch), in that order."""
        return DecodedPrompts(
            hyper_in=self.hyper_in[index],
            image_tokens=None if self.image_tokens is None else self.image_tokens[index],
            iou_predictions=self.iou_predictions[index],
            grid=self.grid,
            first_upscaling=None if self.first_upscaling is None else self.first_upscaling.select(index),
        )


class UpscalingMatrices(NamedTuple):
    """The upscaling's transposed convolutions as matmul weights and biases."""

    first_weight: torch.Tensor  # (2 x 2 x C/4) x C
    first_bias: torch.Tensor
    second_weights: tuple[torch.Tensor, ...]  # per output row offset k: (2 x C/8) x C/4
    second_biases: tuple[torch.Tensor, ...]


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
        # (the upscaling tensors' weights_state, the matrices made of them): see _upscaling_layers
        self._upscaling_cache: tuple[tuple, UpscalingMatrices] | None = None

    def image_side(
        self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, dense_prompt_embeddings: torch.Tensor
    ) -> ImageSide:
        """Prompt-independent work for one image and dense prompt, reusable across sparse prompts.
        In eager CPU inference that includes the maps that spare each prompt most of its work on
        the image tokens (:mod:`segany.modeling.factored_image`, :mod:`segany.modeling.update_maps`);
        not in half precision, whose rounding their Gram products would magnify."""
        full_precision = image_embeddings.dtype in (torch.float32, torch.float64)
        factored = eager_cpu_inference(image_embeddings) and not torch.is_grad_enabled() and full_precision
        side = self.transformer.image_side(image_embeddings + dense_prompt_embeddings, image_pe, factored)
        if factored:
            layers, matrices = self.transformer.layers, self._upscaling_layers()
            side.upscaling = FactoredMap.of(
                side.keys,
                [(layer.cross_attn_image_to_token.out_proj, layer.cross_attn_image_to_token.num_heads)
                 for layer in layers],
                [layer.norm4 for layer in layers],
                matrices.first_weight,
                matrices.first_bias,
            )
        return side

    def image_side_weights(self) -> tuple[torch.Tensor, ...]:
        """The weights :meth:`image_side` reads."""
        first = self.output_upscaling[0]
        layers = self.transformer.layers
        modules = [module for layer in layers for module in (layer.cross_attn_image_to_token.out_proj, layer.norm4)]
        factored = tuple(tensor for module in modules for tensor in (module.weight, module.bias))
        return (*self.transformer.image_side_weights(), *factored, first.weight, first.bias)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        image_side: ImageSide | None = None,
        streams: int = 1,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return low-res mask logits (B x M x 4h x 4w) and IoU predictions (B x M), M = 3 or 1.

        One image embedding (batch 1) serves a batch of prompts, or each prompt has its own.
        ``image_side``, from :meth:`image_side` with the same embedding and dense prompt,
        skips recomputing it. ``streams`` > 1 splits the work between parallel CPU streams
        (:func:`segany.modeling.streams.stream_count` says how many suit the tensors).
        """
        decoded = self.decode(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, image_side, multimask_output,
            streams,
        )
        return self.upscale_masks(decoded, streams=streams), decoded.iou_predictions

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        image_side: ImageSide | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All mask tokens' logits and IoU predictions, before choosing single or multi-mask."""
        decoded = self.decode(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, image_side
        )
        return self.upscale_masks(decoded), decoded.iou_predictions

    def decode(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        image_side: ImageSide | None = None,
        multimask_output: bool | None = None,
        streams: int = 1,
    ) -> DecodedPrompts:
        """Run the transformer, the IoU head and the hypernetworks for a batch of prompts: masks
        1-3 with ``multimask_output``, mask 0 without, all four when it is None. Everything on
        the token side happens here, at the batch's size, so that a mask rounds the same
        whichever subset of prompts is upscaled. ``streams``: see :meth:`forward`."""
        batch = sparse_prompt_embeddings.shape[0]
        if multimask_output is None:
            masks = list(range(self.num_mask_tokens))
        else:
            masks = list(range(1, self.num_mask_tokens)) if multimask_output else [0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.expand(batch, -1, -1), sparse_prompt_embeddings], dim=1)
        if image_side is None:  # made for this call alone: not worth the maps kept for many prompts
            image_side = self.transformer.image_side(image_embeddings + dense_prompt_embeddings, image_pe)
        factored = image_side.upscaling is not None and eager_cpu_inference(tokens)
        # Only the IoU token and the wanted mask tokens are read: the transformer returns those.
        result = self.transformer.run(
            image_side, tokens, outputs=[0] + [1 + mask for mask in masks], streams=streams, factored=factored
        )
        token_out = result.tokens
        first_upscaling = None
        if result.factors is not None:
            first_upscaling = FactoredProduct.of(*result.factors, image_side.upscaling)
        hyper_in = torch.stack(
            [self.output_hypernetworks_mlps[mask](token_out[:, 1 + row]) for row, mask in enumerate(masks)], dim=1
        )
        return DecodedPrompts(
            hyper_in=hyper_in,
            image_tokens=result.image_tokens,
            iou_predictions=take_tokens(self.iou_prediction_head(token_out[:, 0]), masks),
            grid=tuple(image_pe.shape[-2:]),
            first_upscaling=first_upscaling,
        )

    def upscale_masks(
        self, decoded: DecodedPrompts, extent: tuple[int, int] | None = None, streams: int = 1
    ) -> torch.Tensor:
        """Low-res mask logits (B x M x 4h x 4w) of decoded prompts.

        With ``extent`` (rows, columns of the logits a caller will use), only the image tokens
        that reach it are upscaled: the logits come out cut to whole tokens around it.

        On the CPU (outside autograd) the tokens go a few rows of one prompt at a time: the
        upscaled features are 4x and 16x as many values as the tokens (24 MB a prompt in
        all), and memory-bound passes over them are most of the upscaling's time, so chunks
        whose features stay in the cache are ~15% faster for one prompt and ~25% for a batch of
        four; values agree to float rounding (tests/test_parity.py). GPUs, training and graph
        capture (ONNX export, tracing, torch.compile) keep one pass over the batch. The chunks are
        shared between ``streams`` parallel CPU streams (:mod:`segany.modeling.streams`).
        """
        height, width = decoded.grid
        if extent is not None:
            height, width = min(height, -(-extent[0] // 4)), min(width, -(-extent[1] // 4))
            if (height, width) != decoded.grid:
                decoded = decoded.window(range(height), range(width))
        hyper_in = decoded.hyper_in
        batch, masks = hyper_in.shape[:2]
        layers = self._upscaling_layers()
        if decoded.first_upscaling is None and not eager_cpu_inference(decoded.image_tokens, hyper_in):
            first_product = linear(decoded.image_tokens, (layers.first_weight, layers.first_bias), prepacked=True)
            return self._mask_blocks(first_product, hyper_in, height, width, layers)
        out = hyper_in.new_empty(batch, masks, 4 * height, 4 * width)
        # Each prompt's rows in near-equal chunks of at most UPSCALE_CHUNK_TOKENS, as many as a
        # multiple of the streams, so that every stream gets as many rows (43 rows for 2 streams:
        # 4 chunks of 10-11 rows, not 16 + 16 | 11).
        chunk_count = -(-height // max(1, UPSCALE_CHUNK_TOKENS // width))
        chunk_count = -(-chunk_count // streams) * streams
        chunks = [(prompt, rows) for prompt in range(batch) for rows in split_range(height, chunk_count)]

        def upscale_chunks(part: range) -> None:
            for prompt, rows in (chunks[index] for index in part):
                if decoded.first_upscaling is not None:
                    product = decoded.first_upscaling.of_tokens(prompt, rows.start * width, len(rows) * width)
                else:
                    tokens = decoded.image_tokens[prompt : prompt + 1, rows.start * width : rows.stop * width]
                    product = linear(tokens, (layers.first_weight, layers.first_bias), prepacked=True)
                blocks = self._mask_blocks(product, hyper_in[prompt : prompt + 1], len(rows), width, layers)
                out[prompt : prompt + 1, :, 4 * rows.start : 4 * rows.stop].copy_(blocks)

        in_streams([partial(upscale_chunks, part) for part in split_range(len(chunks), streams)])
        return out

    def upscale_window(
        self, decoded: DecodedPrompts, rows: range, columns: range
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """The low-res logits of the whole tokens that cover low-res ``rows`` x ``columns``, and
        the low-res row and column where they start: the values of :meth:`upscale_masks` there,
        for a fraction of its work."""
        per_token = LOW_RES_PER_TOKEN
        token_rows = range(rows.start // per_token, (rows.stop - 1) // per_token + 1)
        token_columns = range(columns.start // per_token, (columns.stop - 1) // per_token + 1)
        logits = self.upscale_masks(decoded.window(token_rows, token_columns))
        return logits, (per_token * token_rows.start, per_token * token_columns.start)

    def _upscaling_layers(self) -> UpscalingMatrices:
        """Both transposed convolutions as matmul weights and biases. In eager inference they are
        kept until the convolutions' tensors change (:mod:`segany.modeling.weight_state`), so that
        every prompt reuses them, and their oneDNN packing (:mod:`segany.modeling.cpu_linear`)."""
        first, _, _, second, _ = self.output_upscaling
        sources = (first.weight, first.bias, second.weight, second.bias)
        # Autograd and graphs need the operations on the weights (a CUDA graph's capture only records
        # them: what it made could not be kept); inference tensors keep no version to check.
        cuda_capture = first.weight.is_cuda and torch.cuda.is_current_stream_capturing()
        if torch.is_grad_enabled() or capturing_graph() or cuda_capture or any(t.is_inference() for t in sources):
            return self._as_matrices(first, second)
        state = weights_state(*sources)
        if self._upscaling_cache is None or self._upscaling_cache[0] != state:
            # Normal tensors outside autograd, not inference ones: the packing cache needs their versions.
            with torch.inference_mode(False), torch.no_grad():
                self._upscaling_cache = (state, self._as_matrices(first, second))
        return self._upscaling_cache[1]

    @classmethod
    def _as_matrices(cls, first: nn.ConvTranspose2d, second: nn.ConvTranspose2d) -> UpscalingMatrices:
        """The second convolution's rows come in two halves, one per output row offset k (see
        :meth:`_mask_blocks`)."""
        return UpscalingMatrices(
            cls._as_matrix(first),
            first.bias.repeat(4),
            cls._as_matrix(second).chunk(2),
            second.bias.repeat(4).chunk(2),
        )

    def _mask_blocks(
        self,
        first_product: torch.Tensor,
        hyper_in: torch.Tensor,
        height: int,
        width: int,
        layers: UpscalingMatrices,
    ) -> torch.Tensor:
        """Mask logits (B x M x 4h x 4w) of an h x w patch of image tokens, given the first
        upscaling's product of them (B x hw x 2*2*C/4: ``layers.first_weight``, from
        :meth:`_upscaling_layers`).

        Output pixel (4y + 2i + k, 4x + 2j + l) comes from token (y, x), first offset (i, j),
        second offset (k, l). The first upscaling's rows are put in (y, i, x, j) order (a copy of
        the narrow 64-channel features), and the second runs once per k: each k's logits are then
        whole output rows in order, so the masks are assembled from runs of 4w values, not
        gathered two at a time. The logits come out mask-major (classifier x features^T).
        """
        first, norm, first_act, second, second_act = self.output_upscaling
        batch, masks = len(first_product), hyper_in.shape[1]
        x = first_product.view(batch, height, width, 2, 2, first.out_channels)
        x = first_act(F.layer_norm(x, (first.out_channels,), norm.weight, norm.bias, norm.eps))
        x = x.transpose(2, 3).reshape(batch, height * 2 * width * 2, first.out_channels)
        rows_per_k = []
        for weight, bias in zip(layers.second_weights, layers.second_biases, strict=True):
            # Rows (y, i, x, j), columns (l, channel): as rows (y, i, x, j, l) of one channel block.
            features = linear(x, (weight, bias), second_act, prepacked=True).view(batch, -1, second.out_channels)
            rows_per_k.append((hyper_in @ features.transpose(1, 2)).view(batch, masks, height, 2, 4 * width))
        return torch.stack(rows_per_k, dim=4).view(batch, masks, 4 * height, 4 * width)

    @staticmethod
    def _as_matrix(conv: nn.ConvTranspose2d) -> torch.Tensor:
        """A kernel-2, stride-2 ConvTranspose2d's weight (in x out x 2 x 2) as a (2 x 2 x out) x in matrix."""
        return conv.weight.permute(2, 3, 1, 0).reshape(-1, conv.in_channels)
