"""Instance masks from boxes: each box prompts one mask, scored as COCO mask AP.

The boxes are the ground-truth objects' tight boxes (score 1), or a detector's results in
the COCO results format (``image_id``, ``bbox`` XYWH, ``score``), as in the paper's
experiment with ViTDet boxes. AP comes from pycocotools (:mod:`.coco_scores`),
class-agnostic.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from segany.datasets import Sample
from segany.eval.coco_scores import average_precision, evaluate_records, truth_record
from segany.eval.points import tight_box
from segany.eval.segmenters import Segmenter
from segany.masks import encode_rle

MAX_DETS = (1, 10, 100)  # COCO's
COLUMNS = {"images": "images", "objects": "objects", "boxes": "boxes", "ap": "AP", "ap50": "AP50", "ap75": "AP75",
           "ap_small": "AP small", "ap_medium": "AP medium", "ap_large": "AP large"}


def read_detections(path: Path) -> dict[str, list[dict]]:
    """A COCO results JSON as ``{str(image_id): [{"box": XYXY, "score"}, ...]}``."""
    if not path.is_file():
        raise FileNotFoundError(f"detections file not found: {path}")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"detections file {path} is not JSON: {error}") from None
    if not isinstance(results, list):
        raise ValueError(f"detections file {path} must hold a COCO results list of {{image_id, bbox, score}}")
    boxes: dict[str, list[dict]] = defaultdict(list)
    for number, result in enumerate(results):
        try:
            x, y, width, height = (float(value) for value in result["bbox"])
            boxes[str(result["image_id"])].append({"box": [x, y, x + width, y + height], "score": float(result["score"])})
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"detections file {path}, result {number}: expected image_id, bbox [x, y, w, h] "
                             f"and score, got {result!r}") from None
    return dict(boxes)


def ground_truth_boxes(sample: Sample) -> list[dict]:
    """Each object's tight box (outside ignored pixels), score 1."""
    ignore = sample.ignore
    scored = [mask & ~ignore if ignore is not None else mask for mask in sample.masks]
    return [{"box": tight_box(mask).tolist(), "score": 1.0} for mask in scored if mask.any()]


def evaluate_image(segmenter: Segmenter, sample: Sample, image: np.ndarray, boxes: list[dict]) -> dict:
    """One mask per box; the image's ground truth kept beside the predictions for scoring."""
    predictions = []
    if boxes:
        segmenter.set_image(image)
    for box in boxes:
        answer = segmenter.predict(box=np.asarray(box["box"], float), multimask=False)
        predictions.append({"segmentation": encode_rle(answer.masks[0]), "score": box["score"], "box": box["box"]})
    return {**truth_record(image, sample.masks, sample.ignore), "predictions": predictions}


def summarize(records: list[dict]) -> dict:
    if not any(record["truth"] for record in records):
        raise ValueError("no image was evaluated: the dataset holds no readable image with a ground-truth mask")
    evaluation = evaluate_records(records, list(MAX_DETS))
    return {
        "images": len(records),
        "objects": sum(len(record["truth"]) for record in records),
        "boxes": sum(len(record["predictions"]) for record in records),
        "ap": average_precision(evaluation),
        "ap50": average_precision(evaluation, iou=0.5),
        "ap75": average_precision(evaluation, iou=0.75),
        **{f"ap_{area}": average_precision(evaluation, area) for area in ("small", "medium", "large")},
    }
