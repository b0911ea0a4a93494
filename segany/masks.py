"""Binary-mask utilities shared by every part of segany: COCO RLE, boxes, areas.

RLE encoding and decoding go through pycocotools, the format's reference implementation.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as coco_mask


def encode_rle(mask: np.ndarray) -> dict:
    """Encode one HxW binary mask as COCO RLE, with ``counts`` as a str (JSON-ready)."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (HxW), got shape {mask.shape}")
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def decode_rle(rle: dict) -> np.ndarray:
    """Decode a COCO RLE (compressed str/bytes counts, or uncompressed list counts) to bool HxW."""
    if isinstance(rle.get("counts"), list):
        rle = coco_mask.frPyObjects(rle, *rle["size"])
    elif isinstance(rle.get("counts"), str):
        rle = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    return coco_mask.decode(rle).astype(bool)

