"""Test doubles for the evaluations: segmenters whose scores are known in advance, synthetic images."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np

from segany.eval.segmenters import Prediction

DATA = Path(__file__).parent / "data"


def image_key(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


class PerfectSegmenter:
    """Answers every prompt with the ground-truth object under the first positive click (or in the box).

    Asked for three masks, it adds two empty ones; ``confident=False`` makes it trust the
    right answer least, so that its most confident mask is wrong but its oracle mask right.
    """

    name = "perfect"

    def __init__(self, objects: dict[str, list[np.ndarray]], confident: bool = True) -> None:
        self.objects = objects  # image_key -> its ground-truth masks
        self.confident = confident
        self.masks: list[np.ndarray] = []

    def set_image(self, image: np.ndarray) -> None:
        self.masks = self.objects[image_key(image)]

    def predict(self, points=None, labels=None, box=None, previous=None, multimask=False) -> Prediction:
        if points is not None:
            x, y = points[list(labels).index(1)].astype(int)
            (mask,) = [m for m in self.masks if m[y, x]]
        else:
            x0, y0, x1, y1 = np.asarray(box, int)
            (mask,) = [m for m in self.masks if m[y0:y1, x0:x1].sum() == m.sum()]
        if not multimask:
            return Prediction(mask[None], np.ones(1), mask[None])
        masks = np.stack([mask, np.zeros_like(mask), np.zeros_like(mask)])
        scores = np.array([0.9, 0.5, 0.3] if self.confident else [0.1, 0.5, 0.3])
        return Prediction(masks, scores, masks)


class EmptySegmenter:
    """Answers every prompt with the empty mask."""

    name = "empty"

    def set_image(self, image: np.ndarray) -> None:
        self.shape = image.shape[:2]

    def predict(self, points=None, labels=None, box=None, previous=None, multimask=False) -> Prediction:
        count = 3 if multimask else 1
        masks = np.zeros((count, *self.shape), bool)
        return Prediction(masks, np.ones(count), masks)


def shapes_image(rng: np.random.Generator, size=(60, 80)) -> tuple[np.ndarray, list[np.ndarray]]:
    """A noisy image with a filled ellipse and a rectangle in flat colours, and their masks."""
    height, width = size
    image = rng.integers(60, 120, (height, width, 3)).astype(np.uint8)
    ellipse = np.zeros(size, np.uint8)
    cv2.ellipse(ellipse, (22, 30), (14, 10), 0, 0, 360, 1, -1)
    rectangle = np.zeros(size, np.uint8)
    rectangle[10:40, 50:72] = 1
    image[ellipse > 0] = (230, 40, 40)
    image[rectangle > 0] = (40, 40, 230)
    return image, [ellipse.astype(bool), rectangle.astype(bool)]
