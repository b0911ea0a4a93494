"""Binary-mask utilities shared by every part of segany: RLE, boxes, stability, cleanup, NMS.

RLE encoding and decoding go through pycocotools, the format's reference implementation;
connected components through OpenCV; box NMS through torchvision. Everything that runs per
mask in automatic generation works on whole batches at once.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from pycocotools import mask as coco_mask


def encode_rle(mask: np.ndarray) -> dict:
    """Encode one HxW binary mask as COCO RLE, with ``counts`` as a str (JSON-ready)."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (HxW), got shape {mask.shape}")
    return encode_rles(mask[None])[0]


def encode_rles(masks: np.ndarray) -> list[dict]:
    """Encode N x H x W binary masks as COCO RLEs (str counts) in one pycocotools call."""
    if masks.ndim != 3:
        raise ValueError(f"masks must be 3-D (N x H x W), got shape {masks.shape}")
    # pycocotools wants H x W x N of 0/1 bytes in Fortran order, which is N x W x H in C order.
    column_major = np.ascontiguousarray(masks.transpose(0, 2, 1) != 0).view(np.uint8).transpose(2, 1, 0)
    rles = coco_mask.encode(column_major)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def decode_rle(rle: dict) -> np.ndarray:
    """Decode a COCO RLE (compressed str/bytes counts, or uncompressed list counts) to bool HxW."""
    if isinstance(rle.get("counts"), list):
        rle = coco_mask.frPyObjects(rle, *rle["size"])
    elif isinstance(rle.get("counts"), str):
        rle = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    return coco_mask.decode(rle).astype(bool)


def uncompressed_rles(masks: np.ndarray) -> list[dict]:
    """Encode N x H x W binary masks as uncompressed RLEs: ``{"size": [h, w], "counts": [int, ...]}``.

    Counts run down the columns (Fortran order) and start with the length of the first run
    of zeros, which is 0 when the first pixel is set: the layout pycocotools'
    ``frPyObjects`` reads. All masks' run boundaries come from one vectorised pass.
    """
    count, height, width = masks.shape
    flat = np.ascontiguousarray(masks.transpose(0, 2, 1), dtype=bool).reshape(count, height * width)
    mask_index, position = np.nonzero(flat[:, 1:] != flat[:, :-1])
    per_mask = np.bincount(mask_index, minlength=count)
    rles = []
    for changes, first_set in zip(np.split(position + 1, np.cumsum(per_mask)[:-1]), flat[:, 0]):
        bounds = np.concatenate([[0], changes, [height * width]])
        counts = np.diff(bounds).tolist()
        rles.append({"size": [height, width], "counts": [0, *counts] if first_set else counts})
    return rles


def stability_scores(logits: torch.Tensor, mask_threshold: float, offset: float) -> torch.Tensor:
    """IoU between each mask thresholded at ``mask_threshold + offset`` and at ``- offset``.

    The tighter mask always lies inside the looser one, so the IoU is a ratio of pixel
    counts. Both thresholds reuse one scratch buffer, and counting runs on its bytes, so no
    thresholded copy of the batch is ever allocated. NaN where the looser mask is empty.
    """
    logits = logits.reshape(-1, *logits.shape[-2:])
    scratch = torch.empty(logits.shape, dtype=torch.bool, device=logits.device)
    counts = []
    for cutoff in (mask_threshold + offset, mask_threshold - offset):
        torch.gt(logits, cutoff, out=scratch)
        counts.append(count_set_pixels(scratch))
    tight, loose = counts
    return tight.float() / loose.float()


def count_set_pixels(masks: torch.Tensor) -> torch.Tensor:
    """Number of set pixels of each of N x H x W bool masks (int64, on the masks' device)."""
    if masks.device.type != "cpu":
        return masks.flatten(1).sum(1)
    # numpy's count_nonzero on contiguous bytes is an order of magnitude faster than torch's sum.
    array = masks.numpy()
    return torch.tensor([np.count_nonzero(mask) for mask in array], dtype=torch.int64)


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight XYXY boxes (inclusive pixel indices, int64) of N x H x W bool masks; [0, 0, 0, 0] if empty."""
    if masks.shape[0] == 0:
        return torch.zeros(0, 4, dtype=torch.int64, device=masks.device)
    rows = masks.any(dim=-1)
    cols = masks.any(dim=-2)
    boxes = torch.stack(
        [first_set(cols), first_set(rows), last_set(cols), last_set(rows)], dim=-1
    )
    empty = ~rows.any(dim=-1)
    return boxes.masked_fill(empty[:, None], 0)


def first_set(flags: torch.Tensor) -> torch.Tensor:
    """Index of the first True along the last axis (0 where there is none)."""
    return flags.to(torch.uint8).argmax(dim=-1)


def last_set(flags: torch.Tensor) -> torch.Tensor:
    """Index of the last True along the last axis."""
    return flags.shape[-1] - 1 - flags.flip(-1).to(torch.uint8).argmax(dim=-1)


def box_xyxy_to_xywh(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) XYXY boxes to XYWH."""
    return torch.cat([boxes[..., :2], boxes[..., 2:] - boxes[..., :2]], dim=-1)


def box_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices of the boxes that non-maximum suppression keeps, best score first.

    All boxes are one category. torchvision's ``batched_nms`` is used (not ``nms``) because
    it orders ties the way the official generator sees them.
    """
    from torchvision.ops import batched_nms

    categories = torch.zeros(len(boxes), dtype=torch.int64, device=boxes.device)
    return batched_nms(boxes.float(), scores, categories, iou_threshold=iou_threshold)


def remove_small_regions(mask: np.ndarray, min_area: float, mode: str) -> tuple[np.ndarray, bool]:
    """Fill holes (``mode="holes"``) or drop islands (``"islands"``) smaller than ``min_area`` pixels.

    Regions are 8-connected. Background regions that touch the border count as holes too.
    When every island is small, the largest one stays. Returns the mask and whether it changed.
    """
    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    fill_holes = mode == "holes"
    regions_of = np.logical_xor(mask, fill_holes).astype(np.uint8)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(regions_of, 8)
    sizes = stats[1:, cv2.CC_STAT_AREA]
    small = sizes < min_area
    if not small.any():
        return mask, False
    if fill_holes:
        # Label 0 is the mask itself; small background regions join it.
        keep = np.concatenate([[True], small])
    else:
        keep = np.concatenate([[False], ~small])
        if not keep.any():
            keep[int(np.argmax(sizes)) + 1] = True
    return keep[labels], True
