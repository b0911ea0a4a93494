"""Where the simulated user clicks: the object's centre, then the centre of the worst error.

Both follow the interactive-segmentation literature (RITM, as used by the SAM paper): a
region's centre is its pixel farthest from the region's boundary (the maximum of the
distance transform, the image border counting as boundary), and the next click goes to the
centre of the largest error region, the false-negative or false-positive pixel farthest from
the error's boundary: positive on a missed part, negative on a spurious one.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Click:
    x: int
    y: int
    positive: bool

    @property
    def label(self) -> int:
        """SAM's point label: 1 foreground, 0 background."""
        return int(self.positive)


def distance_to_boundary(region: np.ndarray) -> np.ndarray:
    """Exact Euclidean distance of each region pixel to the nearest pixel outside it (or the border)."""
    padded = np.pad(region.astype(np.uint8), 1)
    return cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]


def region_centre(region: np.ndarray) -> tuple[tuple[int, int], float]:
    """``((x, y), depth)``: the pixel deepest inside ``region`` and its distance to the boundary.

    Several pixels can be deepest (a rectangle's middle line); then the one nearest their
    mean is taken (the first in row-major order on a tie), so the click lands in the middle.
    Depth 0 means the region is empty.
    """
    distance = distance_to_boundary(region)
    depth = float(distance.max(initial=0.0))
    if depth == 0:
        return (0, 0), 0.0
    ys, xs = np.nonzero(distance == depth)
    nearest = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
    return (int(xs[nearest]), int(ys[nearest])), depth


def centre_point(mask: np.ndarray) -> Click:
    """The single-point protocol's prompt: a positive click at the mask's centre."""
    (x, y), depth = region_centre(mask)
    if depth == 0:
        raise ValueError("cannot place a click on an empty mask")
    return Click(x, y, positive=True)


def next_click(prediction: np.ndarray, target: np.ndarray, ignore: np.ndarray | None = None) -> Click | None:
    """The correction a user makes next, or None when the prediction has no error left."""
    missed = target & ~prediction
    spurious = prediction & ~target
    if ignore is not None:
        missed, spurious = missed & ~ignore, spurious & ~ignore
    (fn_x, fn_y), fn_depth = region_centre(missed)
    (fp_x, fp_y), fp_depth = region_centre(spurious)
    if fn_depth == 0 and fp_depth == 0:
        return None
    if fn_depth >= fp_depth:
        return Click(fn_x, fn_y, positive=True)
    return Click(fp_x, fp_y, positive=False)
