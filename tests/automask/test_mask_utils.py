"""segany.masks and the generator's geometry against the official package's own helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segany.automask import boxes_near_crop_edge, crop_boxes, layer_point_grids
from segany.masks import (
    box_nms,
    decode_rle,
    encode_rle,
    encode_rles,
    masks_to_boxes,
    remove_small_regions,
    stability_scores,
    uncompressed_rles,
)

amg = pytest.importorskip("segment_anything.utils.amg", reason="the official package is the oracle")


def blobby_masks(rng: np.random.Generator, count: int, height: int, width: int) -> np.ndarray:
    """Masks with holes, islands, borders touched and empty/full cases: smoothed noise, thresholded."""
    noise = torch.as_tensor(rng.standard_normal((count, 1, height // 4 + 1, width // 4 + 1)), dtype=torch.float32)
    smooth = torch.nn.functional.interpolate(noise, size=(height, width), mode="bilinear")[:, 0]
    masks = (smooth > torch.as_tensor(rng.uniform(-1.5, 1.5, (count, 1, 1)), dtype=torch.float32)).numpy()
    masks[0] = False
    masks[1] = True
    masks[2] = False
    masks[2, height - 1, width - 1] = True  # a single pixel in the corner
    return masks


@pytest.fixture
def masks(rng) -> np.ndarray:
    return blobby_masks(rng, 24, 37, 53)


def test_uncompressed_rle_matches_official(masks):
    expected = amg.mask_to_rle_pytorch(torch.as_tensor(masks))
    assert uncompressed_rles(masks) == expected


def test_coco_rle_matches_official_and_round_trips(masks):
    official = [amg.coco_encode_rle(rle) for rle in amg.mask_to_rle_pytorch(torch.as_tensor(masks))]
    ours = encode_rles(masks)
    assert ours == official
    assert all(isinstance(rle["counts"], str) for rle in ours)
    for mask, rle, uncompressed in zip(masks, ours, uncompressed_rles(masks)):
        np.testing.assert_array_equal(decode_rle(rle), mask)
        np.testing.assert_array_equal(decode_rle(uncompressed), mask)
        assert encode_rle(mask) == rle


def test_encode_rle_treats_any_nonzero_as_set():
    mask = np.array([[0, 255, 7], [1, 0, 0]], dtype=np.uint8)
    np.testing.assert_array_equal(decode_rle(encode_rle(mask)), mask != 0)
    with pytest.raises(ValueError, match="2-D"):
        encode_rle(mask[None])


def test_stability_matches_official(rng):
    logits = torch.as_tensor(rng.normal(0, 2, (20, 31, 45)), dtype=torch.float32)
    logits[3] = -5.0  # empty at both cutoffs: 0 / 0
    expected = amg.calculate_stability_score(logits, 0.0, 1.0)
    actual = stability_scores(logits, 0.0, 1.0)
    assert actual.dtype == expected.dtype
    torch.testing.assert_close(actual, expected, equal_nan=True, rtol=0, atol=0)
    assert torch.isnan(actual[3])
    expected = amg.calculate_stability_score(logits, 0.5, 0.3)
    torch.testing.assert_close(stability_scores(logits, 0.5, 0.3), expected, equal_nan=True, rtol=0, atol=0)


def test_boxes_match_official(masks):
    expected = amg.batched_mask_to_box(torch.as_tensor(masks))
    actual = masks_to_boxes(torch.as_tensor(masks))
    assert torch.equal(actual, expected)
    assert actual[0].tolist() == [0, 0, 0, 0]
    assert actual[1].tolist() == [0, 0, 52, 36]
    assert actual[2].tolist() == [52, 36, 52, 36]


@pytest.mark.parametrize("mode", ["holes", "islands"])
@pytest.mark.parametrize("min_area", [1, 20, 300, 5000])
def test_small_region_removal_matches_official(masks, mode, min_area):
    for mask in masks:
        expected, expected_changed = amg.remove_small_regions(mask, min_area, mode)
        actual, changed = remove_small_regions(mask, min_area, mode)
        assert changed == expected_changed
        np.testing.assert_array_equal(actual, expected)


def test_small_region_removal_keeps_largest_island_when_all_are_small():
    mask = np.zeros((20, 20), dtype=bool)
    mask[1:3, 1:3] = True  # 4 px
    mask[10:13, 10:13] = True  # 9 px
    cleaned, changed = remove_small_regions(mask, 50, "islands")
    assert changed and cleaned.sum() == 9 and cleaned[11, 11]
    with pytest.raises(ValueError, match="mode"):
        remove_small_regions(mask, 50, "specks")


def test_nms_matches_official_order_with_ties(rng):
    from torchvision.ops.boxes import batched_nms

    for count in (7, 1500):  # torchvision takes a different path above 1000 boxes
        corners = torch.as_tensor(rng.integers(0, 200, (count, 2)))
        sizes = torch.as_tensor(rng.integers(1, 60, (count, 2)))
        boxes = torch.cat([corners, corners + sizes], dim=1)
        scores = torch.as_tensor(rng.integers(0, 4, count), dtype=torch.float32)  # many ties
        expected = batched_nms(boxes.float(), scores, torch.zeros(count), iou_threshold=0.5)
        assert torch.equal(box_nms(boxes, scores, 0.5), expected)


@pytest.mark.parametrize("size", [(768, 1024), (1000, 333), (17, 5)])
@pytest.mark.parametrize("layers", [0, 1, 2])
@pytest.mark.parametrize("ratio", [512 / 1500, 0.0, 0.6])
def test_crop_boxes_match_official(size, layers, ratio):
    assert crop_boxes(size, layers, ratio) == amg.generate_crop_boxes(size, layers, ratio)


@pytest.mark.parametrize("per_side, layers, downscale", [(32, 0, 1), (16, 2, 2), (5, 1, 3), (1, 0, 1)])
def test_point_grids_match_official(per_side, layers, downscale):
    expected = amg.build_all_layer_point_grids(per_side, layers, downscale)
    actual = layer_point_grids(per_side, layers, downscale)
    assert len(actual) == len(expected)
    for ours, theirs in zip(actual, expected):
        np.testing.assert_array_equal(ours, theirs)


def test_crop_edge_filter_matches_official(rng):
    image_size = (300, 400)
    boxes_by_crop = {
        "whole image": [0, 0, 400, 300],
        "inner crop": [100, 80, 300, 240],
        "corner crop": [0, 0, 230, 170],
    }
    for crop in boxes_by_crop.values():
        width, height = crop[2] - crop[0], crop[3] - crop[1]
        x0 = torch.as_tensor(rng.integers(0, width, 200))
        y0 = torch.as_tensor(rng.integers(0, height, 200))
        x1 = torch.minimum(x0 + 40, torch.tensor(width - 1))
        y1 = torch.minimum(y0 + 30, torch.tensor(height - 1))
        boxes = torch.stack([x0, y0, x1, y1], 1)
        expected = amg.is_box_near_crop_edge(boxes, crop, [0, 0, image_size[1], image_size[0]])
        actual = boxes_near_crop_edge(boxes, crop, image_size)
        assert torch.equal(actual, expected)
        assert actual.any() or crop == boxes_by_crop["whole image"]
