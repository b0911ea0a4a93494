"""Validation of user prompts (points, box, mask input), with numpy only.

One torch-free module for ``SamPredictor`` and the onnxruntime predictor, so that both
give the same clear errors on the same bad input.
"""

from __future__ import annotations

import numpy as np


def check_points(point_coords, point_labels, original_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Nx2 pixel (x, y) points inside the image, with N labels that are 1 or 0."""
    if point_coords is None or point_labels is None:
        raise ValueError("point_coords and point_labels must be given together")
    coords = np.asarray(point_coords, dtype=float)
    labels = np.asarray(point_labels)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise ValueError(f"point_coords must have shape Nx2 (x, y), got {coords.shape}")
    if len(coords) == 0:
        raise ValueError("point_coords is empty: give at least one point")
    if labels.shape != (len(coords),):
        raise ValueError(f"point_labels must have shape ({len(coords)},) to match point_coords, got {labels.shape}")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"point_labels must be 1 (foreground) or 0 (background), got {np.unique(labels).tolist()}")
    check_inside(coords, "point_coords", original_size)
    return coords, labels


def check_box(box, original_size: tuple[int, int]) -> np.ndarray:
    """One XYXY box inside the image, as 4 floats."""
    box = np.asarray(box, dtype=float)
    if box.size != 4 or box.ndim > 2:
        raise ValueError(f"box must have 4 values (x0, y0, x1, y1), got shape {box.shape}")
    box = box.reshape(4)
    check_inside(box.reshape(2, 2), "box", original_size)
    if box[2] < box[0] or box[3] < box[1]:
        raise ValueError(f"box must be XYXY with x1 >= x0 and y1 >= y0, got {box.tolist()}")
    return box


def check_inside(coords: np.ndarray, name: str, original_size: tuple[int, int]) -> None:
    """Finite (x, y) rows within the image's bounds (edges included)."""
    if not np.isfinite(coords).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    height, width = original_size
    outside = (coords[:, 0] < 0) | (coords[:, 0] > width) | (coords[:, 1] < 0) | (coords[:, 1] > height)
    if outside.any():
        raise ValueError(f"{name} {coords[outside].tolist()} outside the {width}x{height} (WxH) image")


def check_mask_input(mask_input, side: tuple[int, int]) -> np.ndarray:
    """A previous prediction's low-res logits, 1 x h x w, finite."""
    mask = np.asarray(mask_input, dtype=np.float32)
    if mask.shape != (1, *side):
        raise ValueError(f"mask_input must have shape (1, {side[0]}, {side[1]}) (low-res logits), got {mask.shape}")
    if not np.isfinite(mask).all():
        raise ValueError("mask_input contains NaN or infinite values")
    return mask
