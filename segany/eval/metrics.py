"""Scores shared by the protocols: IoU with ignored pixels, and the number of clicks (NoC)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def mask_iou(prediction: np.ndarray, target: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """Intersection over union of two bool masks, leaving out ``ignore`` pixels (GrabCut's band).

    Two empty masks agree perfectly (1.0).
    """
    if prediction.shape != target.shape:
        raise ValueError(f"prediction of shape {prediction.shape} does not match the target {target.shape}")
    if ignore is not None:
        prediction, target = prediction & ~ignore, target & ~ignore
    union = np.count_nonzero(prediction | target)
    return 1.0 if union == 0 else np.count_nonzero(prediction & target) / union


def clicks_to_reach(ious: Sequence[float], threshold: float, cap: int) -> int:
    """NoC: clicks until the IoU first reaches ``threshold``; ``cap`` if it never does within ``cap``."""
    for click, iou in enumerate(ious[:cap], 1):
        if iou >= threshold:
            return click
    return cap
