"""Automatic mask generation: the data engine's fully automatic stage.

The model is prompted with a regular grid of single foreground points over the image (and,
optionally, over zoomed-in overlapping crops). Each point yields three candidate masks;
those the model itself rates confident (predicted IoU) and that are stable (the mask barely
changes when the logit cutoff moves) survive; near-duplicates are removed by box NMS,
within each crop and then across crops; small holes and islands can be cleaned up.

:class:`SamAutomaticMaskGenerator` is a drop-in for the official one: same arguments,
defaults and record keys, and the same records on the same weights. It is faster because
it never builds what it throws away: masks are filtered by predicted IoU before the
decoder's feature upscaling runs (it runs only for prompts with a confident mask); masks
that reach into a crop's inner-edge strip, which the crop-edge filter would drop, are found
from the few image tokens under the strip and never upscaled whole; only survivors are
upscaled to pixels (in memory-bounded chunks); stability scores and boxes come out of the
pass that resizes the masks; masks are kept bit-packed until NMS has picked the survivors,
and only those are RLE-encoded, in one pycocotools call. On the CPU a crop's prompt batches
run in parallel streams (:func:`segany.modeling.streams.map_in_streams`), each on its own
core, which their many small operations use better than one batch at a time across all cores.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from itertools import product
from typing import Any

import numpy as np
import torch

from segany.build import OFFICIAL_THRESHOLDS
from segany.io import check_image_array
from segany.masks import (
    box_nms,
    box_xyxy_to_xywh,
    encode_rles,
    masks_to_boxes,
    remove_small_regions,
    uncompressed_rles,
)
from segany.modeling import Sam
from segany.modeling.streams import cpu_streams, map_in_streams
from segany.predictor import SamPredictor

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")

# Upscaled float logits held at once while filtering; bounds peak memory on large images (on the
# CPU the resize kernels hold only the masks, a quarter of that).
UPSCALE_CHUNK_BYTES = 128 * 2**20

# On CPU the decoder runs twice as fast on a few prompts at a time than on 64, because each
# prompt's 4096 x 256 image-token tensors then stay in cache; results are bit-identical from
# 4 prompts up (smaller batches take other matmul kernels that round differently).
DECODE_BATCH_CPU = 4

# A mask whose box lies within this many pixels of a crop's inner edge was cut by the crop.
CROP_EDGE_TOLERANCE = 20.0

# A mask is dropped as cut by a crop edge before its upscaling only on pixels whose logit clears
# the mask threshold by this fraction of the largest logit read: far above any rounding.
EDGE_PIXEL_MARGIN = 1e-3


def point_grid(points_per_side: int) -> np.ndarray:
    """``points_per_side``² points at cell centres of [0, 1]², x varying fastest (N x 2)."""
    offset = 1 / (2 * points_per_side)
    side = np.linspace(offset, 1 - offset, points_per_side)
    xs, ys = np.meshgrid(side, side)
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def layer_point_grids(points_per_side: int, crop_n_layers: int, downscale_factor: int) -> list[np.ndarray]:
    """One grid per crop layer; layer i has ``points_per_side / downscale_factor**i`` points a side."""
    return [point_grid(int(points_per_side / downscale_factor**layer)) for layer in range(crop_n_layers + 1)]


def crop_boxes(
    image_size: tuple[int, int], crop_n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """XYXY crop boxes and their layer: the whole image, then 2^i x 2^i overlapping crops per layer i."""
    height, width = image_size
    boxes, layers = [[0, 0, width, height]], [0]
    for layer in range(1, crop_n_layers + 1):
        per_side = 2**layer
        overlap = int(overlap_ratio * min(height, width) * (2 / per_side))
        crop_w = math.ceil((overlap * (per_side - 1) + width) / per_side)
        crop_h = math.ceil((overlap * (per_side - 1) + height) / per_side)
        starts_x = [int((crop_w - overlap) * i) for i in range(per_side)]
        starts_y = [int((crop_h - overlap) * i) for i in range(per_side)]
        for x0, y0 in product(starts_x, starts_y):
            boxes.append([x0, y0, min(x0 + crop_w, width), min(y0 + crop_h, height)])
            layers.append(layer)
    return boxes, layers


def crop_edge_strips(crop_box: list[int], image_size: tuple[int, int]) -> list[tuple[range, range]]:
    """Rows x columns windows of a crop (in its frame) in which any pixel of a mask makes the
    mask's box end within :data:`CROP_EDGE_TOLERANCE` of an edge of the crop that is far from
    the image's edge, so that :func:`boxes_near_crop_edge` drops it: the strips along the inner
    edges (none for the whole image)."""
    x0, y0, x1, y1 = crop_box
    height, width = image_size
    crop_h, crop_w = y1 - y0, x1 - x0
    reach = math.floor(CROP_EDGE_TOLERANCE)
    rows, columns = range(crop_h), range(crop_w)
    strips = []
    if x0 > reach:  # a box starting in the first reach + 1 columns starts near x0, far from 0
        strips.append((rows, range(min(reach + 1, crop_w))))
    if y0 > reach:
        strips.append((range(min(reach + 1, crop_h)), columns))
    if x1 <= width - reach:  # one ending in the last reach columns ends near x1, far from width
        strips.append((rows, range(max(0, crop_w - reach), crop_w)))
    if y1 <= height - reach:
        strips.append((range(max(0, crop_h - reach), crop_h), columns))
    return strips


def boxes_near_crop_edge(boxes: torch.Tensor, crop_box: list[int], image_size: tuple[int, int]) -> torch.Tensor:
    """Which crop-frame XYXY boxes touch an edge of the crop that is not an edge of the image."""
    crop = torch.tensor(crop_box, dtype=torch.float, device=boxes.device)
    image = torch.tensor([0, 0, image_size[1], image_size[0]], dtype=torch.float, device=boxes.device)
    boxes = (boxes + crop[:2].repeat(2).to(boxes.dtype)).float()
    near_crop = (boxes - crop).abs() <= CROP_EDGE_TOLERANCE
    near_image = (boxes - image).abs() <= CROP_EDGE_TOLERANCE
    return (near_crop & ~near_image).any(dim=1)


@dataclass
class MaskCandidates:
    """Masks that survived so far, with what their records need.

    ``packed`` holds each mask bit-packed (one row per mask) in the frame of ``frame``
    (an XYXY box of the image): a crop while that crop is processed, the image after.
    """

    packed: np.ndarray  # N x ceil(h*w/8) uint8
    frame: tuple[int, int, int, int]
    boxes: torch.Tensor  # N x 4 XYXY int64, in the frame
    iou_predictions: torch.Tensor  # N float32
    stability_scores: torch.Tensor  # N float32
    points: torch.Tensor  # N x 2 float64, in the frame
    crop_boxes: torch.Tensor  # N x 4 XYXY int64, in the image

    def __len__(self) -> int:
        return len(self.packed)

    @staticmethod
    def empty(frame: list[int]) -> MaskCandidates:
        """No candidates, in ``frame``."""
        x0, y0, x1, y1 = frame
        return MaskCandidates(
            packed=np.zeros((0, ((y1 - y0) * (x1 - x0) + 7) // 8), dtype=np.uint8),
            frame=tuple(frame),
            boxes=torch.zeros(0, 4, dtype=torch.int64),
            iou_predictions=torch.zeros(0),
            stability_scores=torch.zeros(0),
            points=torch.zeros(0, 2, dtype=torch.float64),
            crop_boxes=torch.zeros(0, 4, dtype=torch.int64),
        )

    @property
    def frame_shape(self) -> tuple[int, int]:
        x0, y0, x1, y1 = self.frame
        return y1 - y0, x1 - x0

    def select(self, index: torch.Tensor) -> MaskCandidates:
        """The candidates at ``index`` (indices or a bool mask), in that order."""
        index = torch.as_tensor(index, device="cpu")
        return MaskCandidates(
            packed=self.packed[index.numpy()],
            frame=self.frame,
            boxes=self.boxes[index],
            iou_predictions=self.iou_predictions[index],
            stability_scores=self.stability_scores[index],
            points=self.points[index],
            crop_boxes=self.crop_boxes[index],
        )

    @staticmethod
    def concatenate(parts: list[MaskCandidates]) -> MaskCandidates:
        """All candidates of ``parts`` (which share one frame), in order."""
        return MaskCandidates(
            packed=np.concatenate([part.packed for part in parts]),
            frame=parts[0].frame,
            boxes=torch.cat([part.boxes for part in parts]),
            iou_predictions=torch.cat([part.iou_predictions for part in parts]),
            stability_scores=torch.cat([part.stability_scores for part in parts]),
            points=torch.cat([part.points for part in parts]),
            crop_boxes=torch.cat([part.crop_boxes for part in parts]),
        )

    def masks(self, index: slice | np.ndarray = slice(None)) -> np.ndarray:
        """Unpack the masks at ``index`` to bool n x h x w (frame-sized)."""
        height, width = self.frame_shape
        bits = np.unpackbits(self.packed[index], axis=1, count=height * width)
        return bits.reshape(-1, height, width).view(bool)

    def in_image(self, image_size: tuple[int, int]) -> MaskCandidates:
        """The same candidates with masks, boxes and points moved from the frame into the image."""
        x0, y0, x1, y1 = self.frame
        height, width = image_size
        if self.frame == (0, 0, width, height):
            return self
        chunk = max(1, UPSCALE_CHUNK_BYTES // (height * width))
        packed = [np.zeros((0, (height * width + 7) // 8), np.uint8)]
        for start in range(0, len(self), chunk):
            in_frame = self.masks(slice(start, start + chunk))
            placed = np.zeros((len(in_frame), height, width), dtype=bool)
            placed[:, y0:y1, x0:x1] = in_frame
            packed.append(pack_masks(placed))
        return MaskCandidates(
            packed=np.concatenate(packed),
            frame=(0, 0, width, height),
            boxes=self.boxes + torch.tensor([x0, y0, x0, y0]),
            iou_predictions=self.iou_predictions,
            stability_scores=self.stability_scores,
            points=self.points + torch.tensor([x0, y0], dtype=self.points.dtype),
            crop_boxes=self.crop_boxes,
        )


def pack_masks(masks: np.ndarray) -> np.ndarray:
    """Bit-pack n x h x w bool masks into n rows of bytes (8x smaller, fast to unpack)."""
    count, height, width = masks.shape
    return np.packbits(masks.reshape(count, height * width), axis=1)


class SamAutomaticMaskGenerator:
    def __init__(
        self,
        model: Sam,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float | None = None,
        stability_score_thresh: float | None = None,
        stability_score_offset: float | None = None,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
    ) -> None:
        """Generate masks for a whole image with ``model``; arguments as the official generator's.

        ``points_per_side`` (or explicit ``point_grids``, normalised to [0, 1], one per crop
        layer) sets the prompt grid; ``points_per_batch`` how many points are prompted and
        filtered together (on CPU the decoder takes them a few at a time, which is faster
        and gives the same logits). Masks need a predicted IoU above ``pred_iou_thresh`` and a stability score
        (IoU of the mask thresholded at ±``stability_score_offset``) of at least
        ``stability_score_thresh``; unset, these three are the official 0.88, 0.95 and 1.0, or the
        values saved with the model's weights (``model.mask_generation_defaults``: the embedded
        model's IoU head and logits run on another scale than SAM's); ``box_nms_thresh`` / ``crop_nms_thresh`` remove
        duplicates within / across crops. ``crop_n_layers`` adds layers of 2^i x 2^i crops
        overlapping by ``crop_overlap_ratio``, with ``crop_n_points_downscale_factor``^i
        fewer points a side. ``min_mask_region_area`` > 0 fills holes and drops islands
        smaller than that. ``output_mode`` is "binary_mask", "uncompressed_rle" or "coco_rle".
        """
        if (points_per_side is None) == (point_grids is None):
            raise ValueError("give exactly one of points_per_side or point_grids")
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {', '.join(OUTPUT_MODES)}; got {output_mode!r}")
        positive = {
            "points_per_batch": points_per_batch, "crop_n_points_downscale_factor": crop_n_points_downscale_factor
        }
        for name, value in positive.items():
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if int(crop_n_layers) != crop_n_layers or crop_n_layers < 0:
            raise ValueError(f"crop_n_layers must be a non-negative integer, got {crop_n_layers!r}")
        if points_per_side is not None:
            if int(points_per_side) != points_per_side or points_per_side < 1:
                raise ValueError(f"points_per_side must be a positive integer, got {points_per_side!r}")
            if int(points_per_side / crop_n_points_downscale_factor**crop_n_layers) < 1:
                raise ValueError(
                    f"points_per_side={points_per_side} leaves no points in crop layer {crop_n_layers} "
                    f"with crop_n_points_downscale_factor={crop_n_points_downscale_factor}"
                )
            self.point_grids = layer_point_grids(points_per_side, crop_n_layers, crop_n_points_downscale_factor)
        else:
            self.point_grids = [check_point_grid(grid, index) for index, grid in enumerate(point_grids)]
            if len(self.point_grids) < crop_n_layers + 1:
                raise ValueError(
                    f"point_grids has {len(self.point_grids)} grids; crop_n_layers={crop_n_layers} needs one per layer "
                    f"({crop_n_layers + 1})"
                )
        self.predictor = SamPredictor(model)
        # Duplicates are removed by torchvision's NMS, whose import takes over a second: it is
        # paid here, with the model, not by the first image (the official package imports it
        # with itself).
        importlib.import_module("torchvision.ops")
        self.points_per_batch = int(points_per_batch)
        given = {"pred_iou_thresh": pred_iou_thresh, "stability_score_thresh": stability_score_thresh,
                 "stability_score_offset": stability_score_offset}
        thresholds = {**OFFICIAL_THRESHOLDS, **model.mask_generation_defaults,
                      **{name: value for name, value in given.items() if value is not None}}
        self.pred_iou_thresh = thresholds["pred_iou_thresh"]
        self.stability_score_thresh = thresholds["stability_score_thresh"]
        self.stability_score_offset = thresholds["stability_score_offset"]
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = int(crop_n_layers)
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.crop_n_points_downscale_factor = int(crop_n_points_downscale_factor)
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode

    @torch.inference_mode()
    def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        """Masks for an HxWx3 uint8 RGB image, as records sorted as the official generator sorts them.

        Each record has ``segmentation`` (per ``output_mode``), ``area`` (pixels),
        ``bbox`` (XYWH), ``predicted_iou``, ``point_coords`` ([[x, y]], the prompt),
        ``stability_score`` and ``crop_box`` (XYWH, the crop the mask came from).
        """
        check_image_array(image)
        image_size = image.shape[:2]
        boxes, layers = crop_boxes(image_size, self.crop_n_layers, self.crop_overlap_ratio)
        candidates = MaskCandidates.concatenate(
            [self._crop_candidates(image, box, layer).in_image(image_size) for box, layer in zip(boxes, layers)]
        )
        if len(boxes) > 1:
            # Across crops, prefer masks from smaller crops (they saw more detail).
            crop_areas = (candidates.crop_boxes[:, 2:] - candidates.crop_boxes[:, :2]).prod(dim=1)
            candidates = candidates.select(box_nms(candidates.boxes, 1.0 / crop_areas.float(), self.crop_nms_thresh))
        if self.min_mask_region_area > 0:
            candidates = self._remove_small_regions(candidates)
        return self._records(candidates)

    def _crop_candidates(self, image: np.ndarray, crop_box: list[int], layer: int) -> MaskCandidates:
        """Candidates from one crop's point grid, after NMS within the crop, in the crop's frame."""
        x0, y0, x1, y1 = crop_box
        crop = image[y0:y1, x0:x1]
        self.predictor.set_image(crop)
        model = self.predictor.model
        image_pe = model.prompt_encoder.get_dense_pe()
        no_mask = model.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        image_side = model.mask_decoder.image_side(self.predictor.features, image_pe, no_mask)

        points = self.point_grids[layer] * np.array(crop.shape[:2])[None, ::-1]
        batches = [points[start : start + self.points_per_batch] for start in range(0, len(points), self.points_per_batch)]

        edge_strips = crop_edge_strips(crop_box, image.shape[:2]) if self.predictor.device.type == "cpu" else []

        # On the CPU the batches run in parallel streams, one core each: a prompt is ~100 small
        # operations (LayerNorms, softmaxes, skinny matmuls over 4,096 image tokens) that gain
        # little from a second thread each, while two prompts on two cores run twice as fast as
        # one. The upscaling's memory budget is shared between the streams.
        with cpu_streams(self.predictor.features, tasks=len(batches)) as streams:
            chunk_bytes = UPSCALE_CHUNK_BYTES // streams

            def batch_candidates(batch: np.ndarray) -> MaskCandidates:
                return self._batch_candidates(
                    batch, crop_box, image.shape[:2], image_pe, image_side, edge_strips, chunk_bytes
                )

            parts = map_in_streams(batch_candidates, batches, streams)
        self.predictor.reset_image()
        candidates = MaskCandidates.concatenate(parts)
        return candidates.select(box_nms(candidates.boxes, candidates.iou_predictions, self.box_nms_thresh))

    def _batch_candidates(
        self,
        points: np.ndarray,
        crop_box: list[int],
        image_size: tuple[int, int],
        image_pe: torch.Tensor,
        image_side: Any,
        edge_strips: list[tuple[range, range]],
        upscale_chunk_bytes: int,
    ) -> MaskCandidates:
        """Decode a batch of points; keep confident, stable masks not cut by the crop edge
        (those reaching its ``edge_strips`` are dropped before upscaling), upscaling at most
        ``upscale_chunk_bytes`` of logits at a time."""
        predictor = self.predictor
        crop_size = predictor.original_size
        coords = torch.as_tensor(predictor.transform.apply_coords(points, crop_size), device=predictor.device)
        iou_predictions, keep, upscaled, low_res = self._decode(coords, image_pe, image_side, edge_strips)
        per_point = iou_predictions.shape[1]
        iou_predictions = iou_predictions.flatten().float()
        points = torch.as_tensor(points.repeat(per_point, axis=0))

        kept = keep.flatten().nonzero()[:, 0]
        # Where each kept mask's logits are among the upscaled prompts' (every kept mask's prompt was).
        row_of_prompt = torch.full((len(coords),), -1, dtype=torch.long, device=kept.device)
        row_of_prompt[upscaled] = torch.arange(len(upscaled), device=kept.device)
        rows = row_of_prompt[kept // per_point] * per_point + kept % per_point
        low_res = low_res.flatten(0, 1)
        height, width = crop_size
        floats_per_mask = predictor.input_size[0] * predictor.input_size[1] + height * width
        chunk = max(1, upscale_chunk_bytes // (4 * floats_per_mask))
        parts = [
            self._filter_by_pixels(
                low_res[rows[start : start + chunk]], iou_predictions, points, kept[start : start + chunk],
                crop_box, image_size,
            )
            for start in range(0, len(kept), chunk)
        ]
        return MaskCandidates.concatenate(parts) if parts else MaskCandidates.empty(crop_box)

    def _decode(
        self, coords: torch.Tensor, image_pe: torch.Tensor, image_side: Any, edge_strips: list[tuple[range, range]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decode single foreground points (N x 2): predicted IoUs (N x 3); which masks may
        become records (N x 3: above ``pred_iou_thresh``, and not cut by the crop's edge as
        seen in its ``edge_strips``, :func:`crop_edge_strips`); and low-res logits (K x 3 x h x w,
        cut to the :meth:`Sam.low_res_extent` of the crop) for the K prompts (indices, K) with
        such a mask.

        Confidence needs only the transformer, and a pixel in an edge strip only the image
        tokens that reach it: the other prompts' masks are never upscaled, which is half the
        decoder's work.
        """
        model = self.predictor.model
        decoder = model.mask_decoder
        step = DECODE_BATCH_CPU if coords.device.type == "cpu" else len(coords)
        extent = model.low_res_extent(self.predictor.input_size)
        ious, keeps, upscaled, low_res = [], [], [], []
        for start in range(0, len(coords), step):
            points = coords[start : start + step, None, :]
            labels = torch.ones(points.shape[:2], dtype=torch.int, device=coords.device)
            sparse, dense = model.prompt_encoder(points=(points, labels), boxes=None, masks=None)
            decoded = decoder.decode(self.predictor.features, image_pe, sparse, dense, image_side, multimask_output=True)
            iou = decoded.iou_predictions
            keep = iou > self.pred_iou_thresh if self.pred_iou_thresh > 0.0 else torch.ones_like(iou, dtype=torch.bool)
            for rows, columns in edge_strips:
                if keep.any():
                    in_strip = model.masks_in_window(
                        decoded, self.predictor.input_size, self.predictor.original_size, rows, columns,
                        EDGE_PIXEL_MARGIN,
                    )
                    keep &= ~in_strip.flatten(2).any(dim=2)
            wanted = keep.any(dim=1).nonzero()[:, 0]
            ious.append(iou)
            keeps.append(keep)
            upscaled.append(start + wanted)
            if len(wanted):
                low_res.append(decoder.upscale_masks(decoded.select(wanted), extent))
        empty = torch.zeros(0, ious[0].shape[1], *extent, device=coords.device)
        return torch.cat(ious), torch.cat(keeps), torch.cat(upscaled), torch.cat(low_res) if low_res else empty

    def _filter_by_pixels(
        self,
        low_res: torch.Tensor,
        iou_predictions: torch.Tensor,
        points: torch.Tensor,
        index: torch.Tensor,
        crop_box: list[int],
        image_size: tuple[int, int],
    ) -> MaskCandidates:
        """Upscale the masks at ``index`` (their low-res logits: ``low_res``, len(index) x h x w);
        keep the stable ones that the crop edge did not cut."""
        predictor = self.predictor
        masks, stability, boxes = predictor.model.postprocess_masks_tallied(
            low_res, predictor.input_size, predictor.original_size, self.stability_score_offset
        )
        if self.stability_score_thresh > 0.0:
            stable = stability >= self.stability_score_thresh
            index, masks, stability, boxes = index[stable], masks[stable], stability[stable], boxes[stable]
        inside = ~boxes_near_crop_edge(boxes, crop_box, image_size)
        index = index[inside]
        return MaskCandidates(
            packed=pack_masks(masks[inside].cpu().numpy()),
            frame=tuple(crop_box),
            boxes=boxes[inside].cpu(),
            iou_predictions=iou_predictions[index].cpu(),
            stability_scores=stability[inside].cpu(),
            points=points[index.cpu()],
            crop_boxes=torch.tensor(crop_box).repeat(len(index), 1),
        )

    def _remove_small_regions(self, candidates: MaskCandidates) -> MaskCandidates:
        """Fill small holes and drop small islands, then NMS again, preferring untouched masks."""
        if len(candidates) == 0:
            return candidates
        packed, boxes, unchanged = [], [], []
        for index in range(len(candidates)):
            mask = candidates.masks(slice(index, index + 1))[0]
            mask, filled = remove_small_regions(mask, self.min_mask_region_area, "holes")
            mask, dropped = remove_small_regions(mask, self.min_mask_region_area, "islands")
            packed.append(pack_masks(mask[None])[0])
            boxes.append(masks_to_boxes(torch.from_numpy(mask[None]))[0])
            unchanged.append(float(not (filled or dropped)))
        cleaned = MaskCandidates(
            packed=np.stack(packed),
            frame=candidates.frame,
            boxes=torch.stack(boxes),
            iou_predictions=candidates.iou_predictions,
            stability_scores=candidates.stability_scores,
            points=candidates.points,
            crop_boxes=candidates.crop_boxes,
        )
        nms_thresh = max(self.box_nms_thresh, self.crop_nms_thresh)
        return cleaned.select(box_nms(cleaned.boxes, torch.tensor(unchanged), nms_thresh))

    def _records(self, candidates: MaskCandidates) -> list[dict[str, Any]]:
        """One record per candidate, with the segmentation in ``output_mode``."""
        records = []
        height, width = candidates.frame_shape
        chunk = max(1, UPSCALE_CHUNK_BYTES // (height * width))
        for start in range(0, len(candidates), chunk):
            masks = candidates.masks(slice(start, start + chunk))
            if self.output_mode == "coco_rle":
                segmentations = encode_rles(masks)
            elif self.output_mode == "uncompressed_rle":
                segmentations = uncompressed_rles(masks)
            else:
                segmentations = list(masks)
            for offset, (mask, segmentation) in enumerate(zip(masks, segmentations)):
                index = start + offset
                records.append(
                    {
                        "segmentation": segmentation,
                        "area": int(np.count_nonzero(mask)),
                        "bbox": box_xyxy_to_xywh(candidates.boxes[index]).tolist(),
                        "predicted_iou": candidates.iou_predictions[index].item(),
                        "point_coords": [candidates.points[index].tolist()],
                        "stability_score": candidates.stability_scores[index].item(),
                        "crop_box": box_xyxy_to_xywh(candidates.crop_boxes[index]).tolist(),
                    }
                )
        return records


def check_point_grid(grid: np.ndarray, index: int) -> np.ndarray:
    """A user-given point grid: N x 2 (x, y) values in [0, 1]."""
    grid = np.asarray(grid, dtype=float)
    if grid.ndim != 2 or grid.shape[1] != 2 or len(grid) == 0:
        raise ValueError(f"point_grids[{index}] must be a non-empty N x 2 array of (x, y), got shape {grid.shape}")
    if not np.isfinite(grid).all() or grid.min() < 0 or grid.max() > 1:
        raise ValueError(f"point_grids[{index}] must hold coordinates normalised to [0, 1]")
    return grid
