"""Proposals (AR) and boxes (mask AP) on predictions whose COCO scores are worked out by hand, and from the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from eval_doubles import EmptySegmenter, PerfectSegmenter

from segany.cli import main
from segany.datasets import open_dataset, readable_samples
from segany.eval import boxes, proposals
from segany.masks import encode_rle


def squares() -> tuple[np.ndarray, list[np.ndarray]]:
    """A 100x100 image with two 20x20 objects (area 400: COCO's "small" is < 32^2)."""
    first, second = np.zeros((100, 100), bool), np.zeros((100, 100), bool)
    first[10:30, 10:30] = True
    second[50:70, 50:70] = True
    return np.zeros((100, 100, 3), np.uint8), [first, second]


class FakeSample:
    id = "squares"

    def __init__(self, masks, ignore=None):
        self.masks, self.ignore = masks, ignore


def generator_of(masks: list[np.ndarray], scores: list[float]):
    def generate(image):
        return [{"segmentation": encode_rle(mask), "predicted_iou": score} for mask, score in zip(masks, scores)]

    return generate


def proposal_record(masks, scores):
    image, truth = squares()
    return {"image": "squares", **proposals.evaluate_image(generator_of(masks, scores), FakeSample(truth), image)}


def test_ground_truth_proposals_recall_everything_and_no_proposals_nothing():
    _, truth = squares()
    perfect = proposals.summarize([proposal_record(truth, [0.9, 0.8])])
    assert perfect["ar100"] == perfect["ar1000"] == perfect["ar1000_small"] == 1.0
    assert perfect["ar1000_medium"] == perfect["ar1000_large"] == -1.0  # no object of those sizes
    empty = proposals.summarize([proposal_record([], [])])
    assert empty["ar100"] == empty["ar1000"] == 0.0 and empty["objects"] == 2


def test_average_recall_by_hand():
    _, (first, _) = squares()
    partial = np.zeros_like(first)
    partial[10:26, 10:28] = True  # 288 of the object's 400 pixels: IoU 0.72
    summary = proposals.summarize([proposal_record([partial], [0.9])])
    # Recall of the first object is 1 at the IoU thresholds 0.5 ... 0.7 (5 of 10), the second is missed.
    assert summary["ar1000"] == pytest.approx(0.5 * 5 / 10)


def test_proposals_beyond_100_count_only_in_ar1000():
    _, truth = squares()
    junk = np.zeros((100, 100), bool)
    junk[90:95, 90:95] = True
    summary = proposals.summarize([proposal_record([junk] * 100 + truth, [0.9] * 100 + [0.5, 0.5])])
    assert summary["ar100"] == 0.0 and summary["ar1000"] == 1.0


def box_record(segmenter, prompts):
    image, truth = squares()
    segmenter.objects = {None: truth}
    return {"image": "squares", **boxes.evaluate_image(segmenter, FakeSample(truth), image, prompts)}


class SquaresPerfect(PerfectSegmenter):
    def set_image(self, image):
        self.masks = self.objects[None]


def test_ground_truth_boxes_with_a_perfect_segmenter_give_ap_one_and_empty_masks_zero():
    _, truth = squares()
    prompts = boxes.ground_truth_boxes(FakeSample(truth))
    assert [p["box"] for p in prompts] == [[10, 10, 30, 30], [50, 50, 70, 70]]
    perfect = boxes.summarize([box_record(SquaresPerfect({}), prompts)])
    assert perfect["ap"] == perfect["ap50"] == perfect["ap75"] == perfect["ap_small"] == 1.0
    assert perfect["boxes"] == perfect["objects"] == 2
    empty = boxes.summarize([box_record(EmptySegmenter(), prompts)])
    assert empty["ap"] == 0.0


def test_mask_ap_by_hand_with_one_of_two_objects_found():
    # One detection, right: precision 1 up to recall 0.5, nothing beyond. COCO's AP samples
    # precision at recall 0, 0.01, ..., 1: 51 of the 101 points are 1.
    summary = boxes.summarize([box_record(SquaresPerfect({}), [{"box": [10, 10, 30, 30], "score": 0.8}])])
    assert summary["ap"] == pytest.approx(51 / 101)


def test_ignored_pixels_are_a_crowd_region():
    _, (first, second) = squares()
    image = np.zeros((100, 100, 3), np.uint8)
    generate = generator_of([first, second], [0.9, 0.8])
    record = {"image": "x", **proposals.evaluate_image(generate, FakeSample([first], ignore=second), image)}
    assert record["ignore"] is not None
    summary = proposals.summarize([record])
    assert summary["objects"] == 1 and summary["ar100"] == 1.0


def test_detections_file_is_read_and_checked(tmp_path):
    path = tmp_path / "detections.json"
    path.write_text(json.dumps([{"image_id": 7, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}]))
    assert boxes.read_detections(path) == {"7": [{"box": [1.0, 2.0, 4.0, 6.0], "score": 0.5}]}
    path.write_text(json.dumps([{"image_id": 7, "bbox": [1, 2]}]))
    with pytest.raises(ValueError, match="result 0"):
        boxes.read_detections(path)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        boxes.read_detections(tmp_path / "missing.json")


def test_cli_proposals_and_boxes(tmp_path, shapes_dataset, tiny_checkpoint, capsys):
    root, _ = shapes_dataset
    out = tmp_path / "out"
    common = [str(root), "--out", str(out), "--checkpoint", f"tiny={tiny_checkpoint}", "--examples", "1"]
    assert main(["eval", "proposals", *common, "--points-per-side", "4", "--pred-iou-thresh", "0",
                 "--stability-score-thresh", "0"]) == 0
    metrics = json.loads((out / "proposals.json").read_text())["models"]["tiny"]
    assert metrics["images"] == 2 and metrics["objects"] == 4 and 0 <= metrics["ar1000"] <= 1
    assert "proposals-examples-tiny.png" in (out / "proposals.md").read_text()
    assert (out / "proposals-examples-tiny.png").stat().st_size > 1000

    assert main(["eval", "boxes", *common]) == 0
    metrics = json.loads((out / "boxes.json").read_text())["models"]["tiny"]
    assert metrics["boxes"] == metrics["objects"] == 4 and 0 <= metrics["ap"] <= 1

    sample_ids = [str(sample.id) for sample, _ in readable_samples(open_dataset(root))]
    detections = tmp_path / "detections.json"
    detections.write_text(json.dumps([{"image_id": sample_ids[0], "bbox": [5, 5, 30, 30], "score": 0.9}]))
    assert main(["eval", "boxes", *common, "--detections", str(detections)]) == 0
    assert json.loads((out / "boxes.json").read_text())["models"]["tiny"]["boxes"] == 1
    detections.write_text(json.dumps([{"image_id": "elsewhere", "bbox": [5, 5, 30, 30], "score": 0.9}]))
    assert main(["eval", "boxes", *common, "--detections", str(detections)]) == 2
    assert "no image_id" in capsys.readouterr().err
