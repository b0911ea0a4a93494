"""Generator thresholds chosen from ground truth: drop non-objects, keep the objects found."""

from __future__ import annotations

import numpy as np
import pytest

from segany.eval.thresholds import ImageCandidates, choose_thresholds, replay


def image(masks: list[tuple[float, float, float, tuple[float, float, float, float]]]) -> ImageCandidates:
    """Candidates from (predicted IoU, stability, IoU with the one object, XYXY box) rows."""
    return ImageCandidates(
        predicted_iou=np.array([m[0] for m in masks], dtype=np.float32),
        stability=np.array([m[1] for m in masks], dtype=np.float32),
        object_iou=np.array([[m[2]] for m in masks], dtype=np.float64),
        boxes=np.array([m[3] for m in masks], dtype=np.float32),
    )


# Each image: its object found by a confident, stable mask; clutter masks elsewhere that are
# either unconfident or unstable; on the last image the object's mask is less confident.
IMAGES = [
    image([(0.6, 0.9, 0.8, (0, 0, 10, 10)), (0.2, 0.9, 0.0, (20, 20, 30, 30)), (0.5, 0.3, 0.0, (40, 0, 50, 10))]),
    image([(0.55, 0.85, 0.7, (0, 0, 10, 10)), (0.3, 0.95, 0.1, (20, 20, 30, 30))]),
    image([(0.45, 0.9, 0.9, (0, 0, 10, 10)), (0.25, 0.2, 0.0, (60, 60, 70, 70))]),
]


def test_replay_filters_then_removes_duplicate_boxes():
    duplicate = image([(0.6, 0.9, 0.8, (0, 0, 10, 10)), (0.5, 0.9, 0.9, (0, 0, 10, 11))])
    outcome = replay([duplicate], 0.0, 0.0)
    # NMS keeps the more confident of the two overlapping masks; the object is still found.
    assert (outcome.masks_per_image, outcome.recall) == (1.0, 1.0)
    assert replay([duplicate], 0.7, 0.0).masks_per_image == 0


def test_chosen_filters_keep_every_object_and_drop_the_clutter():
    best, tried = choose_thresholds(IMAGES, kept_recall=1.0)
    assert best.recall == 1.0 and best.masks_per_image == 1.0
    assert 0.3 <= best.pred_iou_thresh < 0.45 and 0.3 <= best.stability_score_thresh <= 0.85
    assert len(tried) > 100 and all(o.recall <= 1.0 for o in tried)


def test_a_lower_recall_target_allows_stricter_filters():
    best, _ = choose_thresholds(IMAGES, kept_recall=0.6)
    assert best.recall == pytest.approx(2 / 3) and best.masks_per_image == pytest.approx(2 / 3)
    assert best.pred_iou_thresh >= 0.45


def test_nothing_found_is_an_error():
    with pytest.raises(ValueError, match="finds none of the objects"):
        choose_thresholds([image([(0.9, 0.9, 0.1, (0, 0, 5, 5))])])
    with pytest.raises(ValueError, match="kept_recall"):
        choose_thresholds(IMAGES, kept_recall=0)


def test_collect_scores_each_mask_against_each_object():
    from pycocotools import mask as coco_mask

    from segany.eval.thresholds import collect

    target = np.zeros((20, 30), dtype=bool)
    target[5:15, 10:20] = True
    half = target.copy()
    half[:, 15:] = False

    def record(mask, predicted, stability):
        rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
        return {"segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
                "bbox": [float(v) for v in coco_mask.toBbox(rle)], "predicted_iou": predicted,
                "stability_score": stability}

    class Generator:
        def generate(self, pixels):
            assert pixels.shape == (20, 30, 3)
            return [record(target, 0.7, 0.9), record(half, 0.4, 0.5)]

    class Sample:
        masks = [target]

        def read_image(self):
            return np.zeros((20, 30, 3), dtype=np.uint8)

    [candidates] = collect(Generator(), [Sample()])
    np.testing.assert_allclose(candidates.object_iou, [[1.0], [0.5]])
    np.testing.assert_allclose(candidates.boxes, [[10, 5, 20, 15], [10, 5, 15, 15]])
    np.testing.assert_allclose(candidates.predicted_iou, [0.7, 0.4])
    assert replay([candidates], 0.5, 0.0).recall == 1.0 and replay([candidates], 0.8, 0.0).recall == 0.0
