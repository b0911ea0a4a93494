"""The point protocols: one centre click, a box, and the clicks curve with NoC@85/90.

For every ground-truth object:

- **single point**: a positive click at the object's centre (:func:`.clicks.centre_point`),
  three masks asked for; the IoU of the most confident one and of the best one (oracle);
- **box**: the object's tight box, one mask;
- **clicks curve**: the centre click's most confident mask, then up to ``clicks - 1``
  corrections at the centre of the worst error (:func:`.clicks.next_click`), each answered
  with one mask from all clicks so far plus the previous answer's feedback (SAM: its low-res
  logits). IoU after every click gives mIoU-per-click and NoC@85/NoC@90, capped at ``clicks``
  (20 in the literature). Once a prediction is perfect no further click is needed and its
  IoU carries forward.

Pixels in a sample's ``ignore`` map (GrabCut's uncertain band) count in no IoU.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from segany.datasets import Sample
from segany.eval.clicks import centre_point, next_click
from segany.eval.metrics import clicks_to_reach, mask_iou
from segany.eval.segmenters import Segmenter
from segany.masks import encode_rle

NOC_THRESHOLDS = (0.85, 0.90)


def evaluate_image(segmenter: Segmenter, sample: Sample, image: np.ndarray, clicks: int = 20) -> dict:
    """Every protocol of this module on every object of one image: ``{"objects": [...]}``."""
    if clicks < 1:
        raise ValueError(f"clicks must be at least 1, got {clicks}")
    segmenter.set_image(image)
    ignore = sample.ignore
    results = []
    for number, target in enumerate(sample.masks):
        scored = target & ~ignore if ignore is not None else target
        if not scored.any():
            continue
        results.append({"object": number, "area": int(scored.sum()), **evaluate_object(segmenter, target, ignore, clicks)})
    return {"objects": results}


def evaluate_object(segmenter: Segmenter, target: np.ndarray, ignore: np.ndarray | None, clicks: int) -> dict:
    scored = target & ~ignore if ignore is not None else target
    first = centre_point(scored)
    points, labels = [[first.x, first.y]], [first.label]
    answer = segmenter.predict(np.array(points, float), np.array(labels), multimask=True)
    ious = [mask_iou(mask, target, ignore) for mask in answer.masks]
    best = int(np.argmax(answer.scores))
    single_point_mask = answer.masks[best]
    current, feedback = answer.masks[best], answer.feedback[best]
    curve = [ious[best]]
    while len(curve) < clicks:
        click = next_click(current, target, ignore)
        if click is None:
            curve.append(curve[-1])
            continue
        points.append([click.x, click.y])
        labels.append(click.label)
        answer = segmenter.predict(np.array(points, float), np.array(labels), previous=feedback, multimask=False)
        current, feedback = answer.masks[0], answer.feedback[0]
        curve.append(mask_iou(current, target, ignore))
    box_answer = segmenter.predict(box=tight_box(scored), multimask=False)
    return {
        "point": [first.x, first.y],
        "single_point": ious[best],
        "single_point_oracle": max(ious),
        "box": mask_iou(box_answer.masks[0], target, ignore),
        "clicks": curve,
        "mask": encode_rle(single_point_mask),
    }


def tight_box(mask: np.ndarray) -> np.ndarray:
    """XYXY box around a mask's pixels, right and bottom edges exclusive (COCO's x + w)."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], float)


def summarize(records: list[dict], clicks: int) -> dict:
    """mIoU of each protocol, mIoU after each click, NoC@85/90 and how many objects fail them."""
    objects = [obj for record in records for obj in record["objects"]]
    if not objects:
        raise ValueError("no object was evaluated: the dataset holds no readable image with a ground-truth mask")
    curves = np.array([obj["clicks"][:clicks] for obj in objects])
    summary = {
        "images": len(records),
        "objects": len(objects),
        "miou_single_point": float(np.mean([obj["single_point"] for obj in objects])),
        "miou_single_point_oracle": float(np.mean([obj["single_point_oracle"] for obj in objects])),
        "miou_box": float(np.mean([obj["box"] for obj in objects])),
        "miou_per_click": curves.mean(axis=0).tolist(),
        "noc_cap": clicks,
    }
    for threshold in NOC_THRESHOLDS:
        percent = round(threshold * 100)
        counts = [clicks_to_reach(curve, threshold, clicks) for curve in curves.tolist()]
        summary[f"noc{percent}"] = float(np.mean(counts))
        summary[f"failures{percent}"] = int(sum(max(curve) < threshold for curve in curves.tolist()))
    return summary


def write_report(
    out: Path, dataset: Sequence[Sample], settings: dict, metrics: dict, records: dict[str, list[dict]], examples: int
) -> Path:
    """``points.json``, the clicks-curve chart, best/worst single-point examples, and ``points.md``."""
    from segany.eval.report import (
        Example, best_and_worst, example_grid, image_link, markdown_table, plot_curves, safe_file_name, write_markdown,
        write_metrics,
    )
    from segany.masks import decode_rle

    write_metrics(out / "points.json", {"protocol": "points", "settings": settings, "models": metrics})
    report = out / "points.md"
    chart = out / "points-clicks.png"
    plot_curves({name: m["miou_per_click"] for name, m in metrics.items()}, chart,
                "number of clicks", "mIoU", "mIoU against clicks")
    cap = settings["clicks"]
    header = ["model", "objects", "1 point", "1 point (oracle)", "box", "NoC@85", "NoC@90", f"fail@85 (>{cap})",
              f"fail@90 (>{cap})"]
    rows = [[name, m["objects"], m["miou_single_point"], m["miou_single_point_oracle"], m["miou_box"],
             m["noc85"], m["noc90"], m["failures85"], m["failures90"]] for name, m in metrics.items()]
    sections = [
        ("Dataset", f"`{settings['dataset']}`: {len(dataset)} images."),
        ("Metrics (mIoU; NoC = mean clicks to reach the IoU, capped)", markdown_table(header, rows)),
        ("mIoU against the number of clicks", image_link(chart, report, "mIoU against clicks")),
    ]
    samples = {str(sample.id): sample for sample in dataset}
    for name, model_records in records.items() if examples else ():
        objects = [(record["image"], obj) for record in model_records for obj in record["objects"]]
        best, worst = best_and_worst(objects, key=lambda item: item[1]["single_point"], count=examples)
        pictures = []
        for image_id, obj in best + worst:
            sample = samples[image_id]
            pictures.append(Example(
                sample.read_image(), [decode_rle(obj["mask"])], f"{image_id} #{obj['object']}: IoU {obj['single_point']:.3f}",
                points=np.array([obj["point"]]), labels=np.array([1]),
            ))
        grid = out / f"points-examples-{safe_file_name(name)}.png"
        example_grid(pictures, grid, f"{name}: best and worst single-point masks")
        sections.append((f"Examples: {name}", image_link(grid, report, f"{name} examples")))
    write_markdown(report, "Point-prompt evaluation", sections)
    return report
