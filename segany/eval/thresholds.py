"""Automatic-generator thresholds for weights whose IoU head and logits have their own scale.

The official filters (predicted IoU > 0.88, stability >= 0.95) suit SAM's weights. A smaller
model, such as the embedded one, rarely predicts such IoUs and has softer logits, so under
those filters it keeps no mask at all. This module picks its filters from images with ground
truth: one generator run with no filter and no NMS gives every candidate mask, its predicted
IoU, stability and IoU with each object; each candidate pair of thresholds is then replayed
(filter, then the generator's box NMS) and scored by the fraction of objects still found (a
kept mask at IoU >= 0.5) and the masks kept per image. The chosen pair is the one that keeps
the fewest masks while still finding ``kept_recall`` of the objects the unfiltered generator
finds: the filters drop what is not an object, not the objects.

    python -m segany.eval.thresholds ../shared/datasets/COCO_MVal --images 20 --write OUT.safetensors
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as coco_mask
from tqdm import tqdm

from segany.masks import box_nms, encode_rles

FOUND_IOU = 0.5
IOU_GRID = tuple(np.round(np.arange(0.0, 0.95, 0.05), 2))
STABILITY_GRID = tuple(np.round(np.arange(0.0, 0.99, 0.05), 2))


@dataclass
class ImageCandidates:
    """Every unfiltered mask of one image: scores, XYXY boxes, and IoU with each object (N x objects)."""

    predicted_iou: np.ndarray
    stability: np.ndarray
    boxes: np.ndarray
    object_iou: np.ndarray


@dataclass(frozen=True)
class Outcome:
    pred_iou_thresh: float
    stability_score_thresh: float
    recall: float  # fraction of all objects found
    masks_per_image: float


def replay(images: Sequence[ImageCandidates], pred_iou_thresh: float, stability_score_thresh: float,
           box_nms_thresh: float = 0.7) -> Outcome:
    """What the generator would keep with these filters: objects found and masks per image."""
    found = objects = kept_masks = 0
    for image in images:
        keep = (image.predicted_iou > pred_iou_thresh) & (image.stability >= stability_score_thresh)
        index = np.flatnonzero(keep)
        if len(index):
            kept = box_nms(torch.from_numpy(image.boxes[index]), torch.from_numpy(image.predicted_iou[index]),
                           box_nms_thresh).numpy()
            index = index[kept]
        kept_masks += len(index)
        objects += image.object_iou.shape[1]
        if len(index):
            found += int((image.object_iou[index].max(axis=0) >= FOUND_IOU).sum())
    count = max(len(images), 1)
    return Outcome(pred_iou_thresh, stability_score_thresh, found / max(objects, 1), kept_masks / count)


def choose_thresholds(images: Sequence[ImageCandidates], kept_recall: float = 0.9,
                      iou_grid: Sequence[float] = IOU_GRID,
                      stability_grid: Sequence[float] = STABILITY_GRID) -> tuple[Outcome, list[Outcome]]:
    """The pair keeping the fewest masks while finding ``kept_recall`` of what no filter finds; and every pair tried."""
    if not 0 < kept_recall <= 1:
        raise ValueError(f"kept_recall must be in (0, 1], got {kept_recall}")
    unfiltered = replay(images, -np.inf, -np.inf).recall
    if unfiltered == 0:
        raise ValueError("the unfiltered generator finds none of the objects: nothing to calibrate on")
    tried = [replay(images, iou, stability) for iou, stability in itertools.product(iou_grid, stability_grid)]
    good = [outcome for outcome in tried if outcome.recall >= kept_recall * unfiltered]
    best = min(good, key=lambda o: (o.masks_per_image, -o.recall, -o.pred_iou_thresh, -o.stability_score_thresh))
    return best, tried


def collect(generator, samples: Sequence) -> list[ImageCandidates]:
    """Run ``generator`` (unfiltered, no NMS, ``coco_rle`` output) on each sample with ground truth."""
    images = []
    for sample in tqdm(samples, desc="generating", unit="image"):
        image = sample.read_image()
        records = generator.generate(image)
        truths = encode_rles(np.stack(sample.masks))
        rles = [record["segmentation"] for record in records]
        object_iou = (np.asarray(coco_mask.iou(rles, truths, [0] * len(truths))).reshape(len(rles), len(truths))
                      if rles else np.zeros((0, len(truths))))
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in records)], dtype=np.float32)
        images.append(ImageCandidates(
            predicted_iou=np.array([r["predicted_iou"] for r in records], dtype=np.float32),
            stability=np.array([r["stability_score"] for r in records], dtype=np.float32),
            boxes=boxes.reshape(-1, 4),
            object_iou=object_iou,
        ))
    return images


def main(argv: list[str] | None = None) -> None:
    from segany import SamAutomaticMaskGenerator, build_sam, save_sam
    from segany.build import OFFICIAL_THRESHOLDS
    from segany.datasets import open_dataset

    parser = argparse.ArgumentParser(prog="python -m segany.eval.thresholds", description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", type=Path, help="images with ground-truth objects (any segany dataset layout)")
    parser.add_argument("--checkpoint", type=Path, help="weights to calibrate (default: the embedded model)")
    parser.add_argument("--images", type=int, default=20, help="images used, evenly spread over the dataset")
    parser.add_argument("--kept-recall", type=float, default=0.9, help="share of the unfiltered finds to keep")
    parser.add_argument("--write", type=Path, help="save the weights (float16) with the chosen thresholds here")
    args = parser.parse_args(argv)

    model = build_sam("default", args.checkpoint)
    dataset = open_dataset(args.dataset)
    step = max(len(dataset) // args.images, 1)
    samples = [dataset[i] for i in range(0, len(dataset), step)][: args.images]
    generator = SamAutomaticMaskGenerator(model, pred_iou_thresh=-np.inf, stability_score_thresh=-np.inf,
                                          box_nms_thresh=1.0, output_mode="coco_rle")
    images = collect(generator, samples)
    best, _ = choose_thresholds(images, args.kept_recall)
    unfiltered = replay(images, -np.inf, -np.inf)
    official = replay(images, OFFICIAL_THRESHOLDS["pred_iou_thresh"], OFFICIAL_THRESHOLDS["stability_score_thresh"])
    print(f"unfiltered: recall {unfiltered.recall:.3f}, {unfiltered.masks_per_image:.1f} masks/image")
    print(f"official {official.pred_iou_thresh} / {official.stability_score_thresh}: recall {official.recall:.3f}, "
          f"{official.masks_per_image:.1f} masks/image")
    print(f"chosen {best.pred_iou_thresh} / {best.stability_score_thresh}: recall {best.recall:.3f}, "
          f"{best.masks_per_image:.1f} masks/image")
    if args.write:
        model.mask_generation_defaults = {"pred_iou_thresh": float(best.pred_iou_thresh),
                                          "stability_score_thresh": float(best.stability_score_thresh)}
        save_sam(model, args.write, dtype=torch.float16)
        print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
