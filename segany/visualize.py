"""Pictures people look at: masks blended over the photo, with prompts drawn on top."""

from __future__ import annotations

import cv2
import numpy as np


def palette(count: int, seed: int = 0) -> np.ndarray:
    """``count`` distinct bright RGB colours (uint8), stable for a given seed."""
    if count == 0:
        return np.zeros((0, 3), np.uint8)
    hues = (np.arange(count) * 0.618033988749895 + seed * 0.1) % 1.0
    hsv = np.stack([hues * 179, np.full(count, 200), np.full(count, 255)], axis=1).astype(np.uint8)
    return cv2.cvtColor(hsv[None], cv2.COLOR_HSV2RGB)[0]


def overlay_masks(
    image: np.ndarray,
    masks: list[np.ndarray],
    alpha: float = 0.5,
    points: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    box: np.ndarray | None = None,
) -> np.ndarray:
    """Blend each mask in its own colour with a contour, and mark points (green +, red -) and a box."""
    canvas = image.astype(np.float32).copy()
    colours = palette(len(masks))
    for mask, colour in zip(masks, colours):
        canvas[mask] = (1 - alpha) * canvas[mask] + alpha * colour
    canvas = canvas.astype(np.uint8)
    thickness = max(1, round(max(image.shape[:2]) / 400))
    for mask, colour in zip(masks, colours):
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(canvas, contours, -1, tuple(int(c) for c in colour), thickness)
    if box is not None:
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        cv2.rectangle(canvas, (x0, y0), (x1, y1), (255, 255, 255), thickness + 1)
    if points is not None:
        radius = 3 * thickness + 2
        for (x, y), label in zip(points, labels if labels is not None else np.ones(len(points))):
            colour = (0, 220, 0) if label == 1 else (230, 0, 0)
            centre = (int(round(x)), int(round(y)))
            cv2.circle(canvas, centre, radius + thickness, (255, 255, 255), -1)
            cv2.circle(canvas, centre, radius, colour, -1)
    return canvas
