"""The "model" a protocol evaluates: anything that segments an image from clicks and boxes.

A :class:`Segmenter` is told the image once, then answers prompts. Each answer carries
``feedback`` per mask, which the protocol hands back with the next prompt: SAM's low-res
logits (the paper feeds the previous logits back), GrabCut's previous mask. SAM checkpoints
and the OpenCV GrabCut baseline live here; the tests add a perfect and an empty one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np


@dataclass
class Prediction:
    masks: np.ndarray  # C x H x W bool
    scores: np.ndarray  # C: the segmenter's own confidence in each mask
    feedback: np.ndarray  # C x ...: what to pass back as ``previous`` with the next prompt on the same object


class Segmenter(Protocol):
    name: str

    def set_image(self, image: np.ndarray) -> None:
        """Get ready to answer prompts on ``image`` (RGB uint8 HxWx3)."""

    def predict(
        self,
        points: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        previous: np.ndarray | None = None,
        multimask: bool = False,
    ) -> Prediction:
        """Masks for clicks ``points`` (N x 2 pixel x, y; labels 1/0) and/or a ``box`` (XYXY).

        ``previous`` is one mask's ``feedback`` from the last answer on this object.
        ``multimask`` asks for several candidates where the segmenter can give them.
        """


class SamSegmenter:
    """A SAM model through :class:`segany.SamPredictor`, embeddings cached on disk when a cache is given."""

    def __init__(self, model, name: str, cache=None) -> None:
        from segany import SamPredictor
        from segany.embedding_cache import model_fingerprint

        self.name = name
        self.predictor = SamPredictor(model)
        self.cache = cache
        self.model_key = model_fingerprint(model) if cache is not None else None

    def set_image(self, image: np.ndarray) -> None:
        from segany.embedding_cache import set_image_cached

        if self.cache is None:
            self.predictor.set_image(image)
        else:
            set_image_cached(self.predictor, image, self.cache, self.model_key)

    def predict(self, points=None, labels=None, box=None, previous=None, multimask=False) -> Prediction:
        masks, scores, low_res = self.predictor.predict(
            points, labels, box, previous[None] if previous is not None else None, multimask_output=multimask
        )
        return Prediction(masks, scores, low_res)


class GrabCutSegmenter:
    """The classic baseline: OpenCV's GrabCut seeded with the same clicks, or with the box.

    Clicks become hard labels (small discs); the first click also marks a disc around it,
    a quarter of the image's shorter side across, as probable foreground and the rest as
    probable background. Later clicks start from the previous mask, as a user's would.
    """

    iterations = 5

    def __init__(self, name: str = "grabcut") -> None:
        self.name = name
        self.image: np.ndarray | None = None

    def set_image(self, image: np.ndarray) -> None:
        self.image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)

    def predict(self, points=None, labels=None, box=None, previous=None, multimask=False) -> Prediction:
        if self.image is None:
            raise ValueError("set_image must be called before predict")
        if box is not None and points is None:
            mask = self._from_box(np.asarray(box, float))
        else:
            mask = self._from_clicks(np.asarray(points, float), np.asarray(labels), previous)
        return Prediction(mask[None], np.ones(1, np.float32), mask[None])

    def _from_box(self, box: np.ndarray) -> np.ndarray:
        x0, y0, x1, y1 = np.round(box).astype(int)
        labels = np.zeros(self.image.shape[:2], np.uint8)
        rect = (int(x0), int(y0), max(1, int(x1 - x0)), max(1, int(y1 - y0)))
        return self._run(labels, cv2.GC_INIT_WITH_RECT, rect, fallback=rect_mask(labels.shape, rect))

    def _from_clicks(self, points: np.ndarray, labels: np.ndarray, previous: np.ndarray | None) -> np.ndarray:
        height, width = self.image.shape[:2]
        seeds = np.full((height, width), cv2.GC_PR_BGD, np.uint8)
        if previous is not None:
            seeds[previous] = cv2.GC_PR_FGD
        else:
            for x, y in points[labels == 1]:
                cv2.circle(seeds, (int(x), int(y)), max(3, min(height, width) // 8), int(cv2.GC_PR_FGD), -1)
        radius = max(2, min(height, width) // 100)
        for (x, y), label in zip(points, labels):
            cv2.circle(seeds, (int(x), int(y)), radius, int(cv2.GC_FGD if label == 1 else cv2.GC_BGD), -1)
        fallback = np.isin(seeds, (cv2.GC_FGD, cv2.GC_PR_FGD))
        return self._run(seeds, cv2.GC_INIT_WITH_MASK, None, fallback)

    def _run(self, seeds: np.ndarray, mode: int, rect, fallback: np.ndarray) -> np.ndarray:
        """GrabCut, or the seeds themselves where it cannot run (no background or no foreground to model).

        Its colour models start from a random k-means: OpenCV's generator is seeded first, so
        that the same clicks give the same mask and an evaluation repeats exactly.
        """
        cv2.setRNGSeed(0)
        try:
            cv2.grabCut(self.image, seeds, rect, np.zeros((1, 65)), np.zeros((1, 65)), self.iterations, mode)
        except cv2.error:
            return fallback
        return np.isin(seeds, (cv2.GC_FGD, cv2.GC_PR_FGD))


def rect_mask(shape: tuple[int, int], rect: tuple[int, int, int, int]) -> np.ndarray:
    x, y, w, h = rect
    mask = np.zeros(shape, bool)
    mask[y : y + h, x : x + w] = True
    return mask
