"""Sam: the image encoder, prompt encoder and mask decoder, with pre- and post-processing."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from segany.modeling.mask_decoder import DecodedPrompts, MaskDecoder
from segany.modeling.prompt_encoder import PromptEncoder

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


class Sam(nn.Module):
    mask_threshold: float = 0.0
    image_format: str = "RGB"

    def __init__(
        self,
        image_encoder: nn.Module,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        pixel_mean: tuple[float, float, float] = PIXEL_MEAN,
        pixel_std: tuple[float, float, float] = PIXEL_STD,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)
        # The automatic generator's thresholds that suit these weights' IoU head and logit scale
        # (e.g. {"pred_iou_thresh": 0.5}), saved with them; empty for official weights, which
        # keep the official defaults.
        self.mask_generation_defaults: dict[str, float] = {}

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def img_size(self) -> int:
        return self.image_encoder.img_size

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise a resized image (..., 3, h, w) and zero-pad it to the square encoder input."""
        x = (x - self.pixel_mean) / self.pixel_std
        height, width = x.shape[-2:]
        return F.pad(x, (0, self.img_size - width, 0, self.img_size - height))

    @property
    def low_res_scale(self) -> int:
        """Input pixels per low-res logit along each axis (4 for SAM: 1024 / 256)."""
        return self.img_size // self.prompt_encoder.mask_input_size[-1]

    def low_res_extent(self, input_size: tuple[int, ...]) -> tuple[int, int]:
        """Rows and columns of the low-res logits that reach the unpadded input when upscaled.

        Bilinear upscaling at a fixed scale is local, so the rest only ever lands on padding.
        """
        grid_h, grid_w = self.prompt_encoder.mask_input_size
        scale = self.low_res_scale
        return min(grid_h, -(-input_size[0] // scale) + 1), min(grid_w, -(-input_size[1] // scale) + 1)

    def postprocess_masks(
        self,
        masks: torch.Tensor,
        input_size: tuple[int, ...],
        original_size: tuple[int, ...],
        threshold: float | None = None,
        streams: int | None = None,
    ) -> torch.Tensor:
        """Upscale low-res logits to the padded input, drop the padding, resize to the original image.

        Only the :meth:`low_res_extent` of ``masks`` is upscaled (identical values), which saves
        the work spent on padding for non-square images; ``masks`` may already be cut to it.
        With a ``threshold``, the boolean masks ``logits > threshold`` are returned instead of
        the logits (on the CPU the logits are then never materialised at full size). On the CPU
        the resizing runs in up to ``streams`` parallel streams (default: PyTorch's thread count).
        """
        input_size, original_size = _pair(input_size), _pair(original_size)
        planes = self._low_res_planes(masks, input_size)
        if _resized_by_cpu_kernels(planes):
            from segany.modeling.mask_resize import upscale_planes

            resized = torch.from_numpy(
                upscale_planes(planes.numpy(), self.low_res_scale, input_size, original_size, threshold, streams)
            )
        else:
            resized = self._interpolate(planes, input_size, original_size)
            if threshold is not None:
                resized = resized > threshold
        return resized.view(*masks.shape[:-2], *resized.shape[-2:])

    def postprocess_masks_tallied(
        self, masks: torch.Tensor, input_size: tuple[int, ...], original_size: tuple[int, ...], offset: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The masks of :meth:`postprocess_masks` at ``mask_threshold`` as the automatic generator
        reads them: the masks, their stability scores (IoU of the masks at the threshold + and
        - ``offset``) and boxes (XYXY, inclusive, int64; zeros if empty). On the CPU all three
        come out of one pass over the upscaled pixels, which are never stored as logits."""
        input_size, original_size = _pair(input_size), _pair(original_size)
        planes = self._low_res_planes(masks, input_size)
        if _resized_by_cpu_kernels(planes):
            from segany.modeling.mask_resize import upscale_planes_tallied

            tallied = upscale_planes_tallied(
                planes.numpy(), self.low_res_scale, input_size, original_size, self.mask_threshold, offset
            )
            binary, boxes = torch.from_numpy(tallied.masks), torch.from_numpy(tallied.boxes)
            stability = torch.from_numpy(tallied.tight).float() / torch.from_numpy(tallied.loose).float()
        else:
            from segany.masks import masks_to_boxes, stability_scores

            logits = self._interpolate(planes, input_size, original_size)
            stability = stability_scores(logits, self.mask_threshold, offset)
            binary = logits > self.mask_threshold
            boxes = masks_to_boxes(binary)
        leading = masks.shape[:-2]
        return binary.view(*leading, *binary.shape[-2:]), stability.view(leading), boxes.view(*leading, 4)

    def masks_in_window(
        self,
        decoded: DecodedPrompts,
        input_size: tuple[int, ...],
        original_size: tuple[int, ...],
        rows: range,
        columns: range,
        margin: float,
    ) -> torch.Tensor:
        """The window ``rows`` x ``columns`` of decoded prompts' masks at the original size (B x M x
        len(rows) x len(columns)), where the logits exceed ``mask_threshold`` by more than
        ``margin`` times the largest logit the window reads (so that a pixel found set here is set
        in the whole mask even were the window's arithmetic to round differently). Only the
        image tokens that the window reads are upscaled. CPU inference only (the resizing is
        :mod:`segany.modeling.mask_resize`'s)."""
        from segany.modeling.mask_resize import upscale_window, window_sources

        input_size, original_size = _pair(input_size), _pair(original_size)
        low_size = self.low_res_extent(input_size)
        scale = self.low_res_scale
        low_rows, low_columns = window_sources(low_size, scale, input_size, original_size, rows, columns)
        logits, origin = self.mask_decoder.upscale_window(decoded, low_rows, low_columns)
        if not _resized_by_cpu_kernels(logits):
            raise ValueError("masks_in_window runs on CPU float32 logits outside autograd")
        batch, masks = logits.shape[:2]
        threshold = self.mask_threshold + margin * float(logits.abs().max()) if logits.numel() else self.mask_threshold
        planes = logits.reshape(batch * masks, *logits.shape[-2:]).numpy()
        window = upscale_window(planes, origin, low_size, scale, input_size, original_size, rows, columns, threshold)
        return torch.from_numpy(window).view(batch, masks, len(rows), len(columns))

    def _low_res_planes(self, masks: torch.Tensor, input_size: tuple[int, int]) -> torch.Tensor:
        """The :meth:`low_res_extent` of ... x h x w logits as N x h' x w' planes."""
        rows, cols = self.low_res_extent(input_size)
        kept = masks[..., :rows, :cols]
        return kept.reshape(-1, *kept.shape[-2:])

    def _interpolate(
        self, planes: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]
    ) -> torch.Tensor:
        """:meth:`postprocess_masks` with PyTorch's kernels (GPUs, autograd), N x h x w planes."""
        # One plane per batch entry: the upsampling kernel is about twice as fast on N x 1 x h x w
        # as on 1 x N x h x w when it runs on one thread (and the same on more). Upscaling by
        # `scale` straight to the unpadded input size gives the same samples as upscaling the
        # whole grid and cropping, without computing or copying the cropped part.
        scale = float(self.low_res_scale)
        upscaled = torch.ops.aten.upsample_bilinear2d(planes[:, None], list(input_size), False, scale, scale)
        if original_size != input_size:  # bilinear resizing to the same size is the identity
            upscaled = F.interpolate(upscaled, original_size, mode="bilinear", align_corners=False)
        return upscaled[:, 0]

    @torch.no_grad()
    def forward(self, batched_input: list[dict[str, Any]], multimask_output: bool) -> list[dict[str, torch.Tensor]]:
        """Segment a batch of already-resized images, each with its own prompts (official API).

        Besides the official record keys, "text_embeddings" (B x T x D) prompts with text.
        """
        images = torch.stack([self.preprocess(record["image"]) for record in batched_input])
        embeddings = self.image_encoder(images)
        outputs = []
        for record, embedding in zip(batched_input, embeddings):
            points = None
            if "point_coords" in record:
                points = (record["point_coords"], record["point_labels"])
            sparse, dense = self.prompt_encoder(
                points=points, boxes=record.get("boxes"), masks=record.get("mask_inputs"),
                text=record.get("text_embeddings"),
            )
            low_res, iou = self.mask_decoder(
                image_embeddings=embedding.unsqueeze(0),
                image_pe=self.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask_output,
            )
            masks = self.postprocess_masks(
                low_res, record["image"].shape[-2:], record["original_size"], self.mask_threshold
            )
            outputs.append({"masks": masks, "iou_predictions": iou, "low_res_logits": low_res})
        return outputs


def _pair(size: tuple[int, ...]) -> tuple[int, int]:
    """A (height, width) given as any two-element sequence (tensors included) as Python ints."""
    return int(size[0]), int(size[1])


def _resized_by_cpu_kernels(planes: torch.Tensor) -> bool:
    """Whether :mod:`segany.modeling.mask_resize` resizes these logits: float32 on the CPU, outside
    autograd; PyTorch's kernels do everywhere else (GPUs, training)."""
    return planes.device.type == "cpu" and planes.dtype == torch.float32 and not planes.requires_grad
