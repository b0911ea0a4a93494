"""Object proposals: the automatic generator's masks scored by average recall (pycocotools).

Every mask the generator keeps for an image is a class-agnostic proposal, ranked by its
predicted IoU. AR@N is COCO's recall averaged over IoU 0.5:0.95 given the N best proposals
per image, over all objects and per size (small/medium/large); scoring is in
:mod:`.coco_scores`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from segany.datasets import Sample
from segany.eval.coco_scores import average_recall, evaluate_records, truth_record

MAX_DETS = (100, 1000)
SIZES = ("small", "medium", "large")
COLUMNS = {"images": "images", "objects": "objects", "proposals": "proposals/image", "ar100": "AR@100",
           "ar1000": "AR@1000", **{f"ar1000_{size}": f"AR@1000 {size}" for size in SIZES}}


def evaluate_image(generate: Callable[[np.ndarray], list[dict]], sample: Sample, image: np.ndarray) -> dict:
    """The generator's best ``max(MAX_DETS)`` masks of one image as scored predictions, beside its ground truth.

    ``generate`` is :meth:`segany.automask.SamAutomaticMaskGenerator.generate` in ``coco_rle``
    mode (records with ``segmentation`` and ``predicted_iou``).
    """
    records = sorted(generate(image), key=lambda record: -float(record["predicted_iou"]))[: max(MAX_DETS)]
    predictions = [{"segmentation": record["segmentation"], "score": float(record["predicted_iou"])} for record in records]
    return {**truth_record(image, sample.masks, sample.ignore), "predictions": predictions}


def summarize(records: list[dict]) -> dict:
    """AR@100, AR@1000 and AR@1000 per object size (-1 where the dataset has no object of that size)."""
    if not records:
        raise ValueError("no image was evaluated: the dataset holds no readable image")
    evaluation = evaluate_records(records, list(MAX_DETS))
    return {
        "images": len(records),
        "objects": sum(len(record["truth"]) for record in records),
        "proposals": sum(len(record["predictions"]) for record in records) / len(records),
        **{f"ar{n}": average_recall(evaluation, n) for n in MAX_DETS},
        **{f"ar1000_{size}": average_recall(evaluation, max(MAX_DETS), size) for size in SIZES},
    }
