"""Click placement and the basic scores, checked against answers worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from segany.eval.clicks import Click, centre_point, next_click
from segany.eval.metrics import clicks_to_reach, mask_iou


def rectangle(shape=(60, 80), rows=(10, 40), cols=(50, 72)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[rows[0] : rows[1], cols[0] : cols[1]] = True
    return mask


def test_centre_of_a_rectangle_is_its_middle():
    # Rows 10..39, columns 50..71: the distance to the outside is limited by the columns,
    # 11 px at columns 60 and 61 (rows 20..29); the middle of those pixels is (60.5, 24.5),
    # and of the four pixels nearest it the first in row-major order is (x=60, y=24).
    assert centre_point(rectangle()) == Click(60, 24, positive=True)


def test_centre_of_an_odd_square_and_a_mask_touching_the_border():
    assert centre_point(rectangle(rows=(0, 5), cols=(0, 5))) == Click(2, 2, True)  # the border counts as boundary
    single = np.zeros((5, 5), bool)
    single[3, 1] = True
    assert centre_point(single) == Click(1, 3, True)
    with pytest.raises(ValueError, match="empty mask"):
        centre_point(np.zeros((4, 4), bool))


def test_next_click_corrects_the_missed_half_with_a_positive_click():
    target = rectangle()
    prediction = rectangle(cols=(50, 61))  # the right part, columns 61..71, is missed
    prediction[50:55, 5:10] = True  # and a 5x5 spurious blob (depth 3) is added
    # Missed columns 61..71: depth 6 at column 66 for rows 15..34, whose middle row is 24.5 -> row 24.
    assert next_click(prediction, target) == Click(66, 24, positive=True)


def test_next_click_removes_a_larger_spurious_region_with_a_negative_click():
    target = rectangle()
    prediction = target.copy()
    prediction[5:14, 5:14] = True  # a 9x9 spurious square (depth 5), centre (9, 9)
    prediction[10:40, 71] = False  # a missed 1-px column (depth 1)
    assert next_click(prediction, target) == Click(9, 9, positive=False)


def test_no_click_when_only_ignored_pixels_are_wrong():
    target = rectangle()
    band = rectangle(rows=(8, 42), cols=(48, 74)) & ~rectangle(rows=(12, 38), cols=(52, 70))
    prediction = rectangle(rows=(12, 38), cols=(52, 70))  # wrong only inside the band
    assert next_click(prediction, target, ignore=band) is None
    assert mask_iou(prediction, target, band) == 1.0
    assert next_click(target, target) is None


def test_iou_by_hand():
    a = rectangle(rows=(0, 10), cols=(0, 10))  # 100 px
    b = rectangle(rows=(0, 10), cols=(5, 15))  # 100 px, 50 shared
    assert mask_iou(a, b) == pytest.approx(50 / 150)
    ignore = rectangle(rows=(0, 10), cols=(10, 15))  # hides 50 of b's pixels
    assert mask_iou(a, b, ignore) == pytest.approx(50 / 100)
    assert mask_iou(np.zeros((3, 3), bool), np.zeros((3, 3), bool)) == 1.0
    with pytest.raises(ValueError, match="does not match"):
        mask_iou(np.zeros((3, 3), bool), np.zeros((3, 4), bool))


def test_number_of_clicks_is_capped():
    assert clicks_to_reach([0.5, 0.86, 0.95], 0.85, 20) == 2
    assert clicks_to_reach([0.5, 0.86, 0.95], 0.90, 20) == 3
    assert clicks_to_reach([0.5] * 20, 0.85, 20) == 20
    assert clicks_to_reach([0.5] * 19 + [0.99, 0.99], 0.85, 20) == 20
