"""COCO-style scoring of predicted masks against ground-truth masks, through pycocotools.

The proposals and boxes protocols both keep, per image, the ground truth and the predictions
as RLE records (``{"size": [h, w], "truth": [...], "ignore": rle | None, "predictions": [{"segmentation",
"score"}, ...]}``) and score them here with ``COCOeval`` on segmentation masks, class-agnostic
(``useCats=0``): SAM's masks carry no category. Ignored pixels (COCO crowd regions,
GrabCut's band) become a crowd annotation, so predictions on them count neither way, as in COCO.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from segany.annotations import coco_instances

AREA_RANGES = ("all", "small", "medium", "large")  # COCOeval's order


def truth_record(image: np.ndarray, masks: list[np.ndarray], ignore: np.ndarray | None) -> dict:
    """What an image's record keeps of its ground truth (and its size, for images without objects)."""
    from segany.masks import encode_rle

    return {"size": list(image.shape[:2]), "truth": [encode_rle(mask) for mask in masks],
            "ignore": encode_rle(ignore) if ignore is not None else None}


def evaluate_records(records: list[dict], max_dets: list[int]) -> COCOeval:
    """An evaluated and accumulated ``COCOeval`` of every record's predictions (best score first)."""
    images, truths, detections = [], [], []
    for record in records:
        height, width = record["size"]
        images.append({"file_name": str(record["image"]), "height": height, "width": width})
        crowd = [{"segmentation": record["ignore"], "iscrowd": 1}] if record["ignore"] is not None else []
        truths.append([{"segmentation": rle, "iscrowd": 0} for rle in record["truth"]] + crowd)
    ground_truth = COCO()
    ground_truth.dataset = coco_instances(images, truths)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        ground_truth.createIndex()
        for image_id, record in enumerate(records, 1):
            for prediction in record["predictions"]:
                detections.append({"image_id": image_id, "category_id": 1, "segmentation": prediction["segmentation"],
                                   "score": float(prediction["score"])})
        results = ground_truth.loadRes(detections) if detections else COCO()
        if not detections:
            results.dataset = {"images": ground_truth.dataset["images"], "annotations": [], "categories": []}
            results.createIndex()
        evaluation = COCOeval(ground_truth, results, iouType="segm")
        evaluation.params.useCats = 0
        evaluation.params.maxDets = sorted(max_dets)
        evaluation.evaluate()
        evaluation.accumulate()
    return evaluation


def average_recall(evaluation: COCOeval, max_det: int, area: str = "all") -> float:
    """Recall averaged over the IoU thresholds 0.5:0.95, at ``max_det`` predictions per image.

    -1 when the area range holds no ground truth (pycocotools' convention).
    """
    recall = evaluation.eval["recall"][:, 0, AREA_RANGES.index(area), evaluation.params.maxDets.index(max_det)]
    recall = recall[recall > -1]
    return float(recall.mean()) if recall.size else -1.0


def average_precision(evaluation: COCOeval, area: str = "all", iou: float | None = None) -> float:
    """COCO AP (101-point interpolated, at the largest maxDets), over 0.5:0.95 or at one IoU threshold."""
    precision = evaluation.eval["precision"][:, :, 0, AREA_RANGES.index(area), -1]  # T x R
    if iou is not None:
        precision = precision[np.flatnonzero(np.isclose(evaluation.params.iouThrs, iou))]
    precision = precision[precision > -1]
    return float(precision.mean()) if precision.size else -1.0


def best_overlaps(record: dict) -> tuple[list[float], list[int]]:
    """For each true object of a record, the best IoU any prediction reaches and which prediction (-1: none)."""
    if not record["truth"] or not record["predictions"]:
        return [0.0] * len(record["truth"]), [-1] * len(record["truth"])
    predicted = [prediction["segmentation"] for prediction in record["predictions"]]
    ious = np.asarray(coco_mask.iou(predicted, record["truth"], [0] * len(record["truth"]))).reshape(
        len(predicted), len(record["truth"])
    )
    return ious.max(axis=0).tolist(), ious.argmax(axis=0).tolist()


def write_report(
    out, protocol: str, title: str, dataset, settings: dict, metrics: dict, records: dict[str, list[dict]],
    columns: dict[str, str], examples: int,
):
    """``<protocol>.json`` and ``<protocol>.md``: the ``columns`` of ``metrics`` (key -> heading) per model,
    and per model a grid of the best and worst images by mean best overlap, showing for each
    true object the prediction that overlaps it most."""
    from segany.eval.report import (
        Example, best_and_worst, example_grid, image_link, markdown_table, safe_file_name, write_markdown,
        write_metrics,
    )
    from segany.masks import decode_rle

    write_metrics(out / f"{protocol}.json", {"protocol": protocol, "settings": settings, "models": metrics})
    report = out / f"{protocol}.md"
    rows = [[name, *(m[key] for key in columns)] for name, m in metrics.items()]
    sections = [
        ("Dataset", f"`{settings['dataset']}`: {len(dataset)} images; scored by pycocotools COCOeval "
                    "(segmentation masks, class-agnostic)."),
        ("Metrics", markdown_table(["model", *columns.values()], rows)),
    ]
    samples = {str(sample.id): sample for sample in dataset}
    for name, model_records in records.items() if examples else ():
        scored = []
        for record in model_records:
            overlaps, chosen = best_overlaps(record)
            if overlaps:
                scored.append((record, float(np.mean(overlaps)), chosen))
        best, worst = best_and_worst(scored, key=lambda item: item[1], count=examples)
        pictures = [
            Example(samples[record["image"]].read_image(),
                    [decode_rle(record["predictions"][index]["segmentation"]) for index in chosen if index >= 0],
                    f"{record['image']}: mean best IoU {overlap:.3f}")
            for record, overlap, chosen in best + worst
        ]
        grid = out / f"{protocol}-examples-{safe_file_name(name)}.png"
        example_grid(pictures, grid, f"{name}: best and worst images (best prediction per object)")
        sections.append((f"Examples: {name}", image_link(grid, report, f"{name} examples")))
    write_markdown(report, title, sections)
    return report
