"""Simulated prompts: where points land, how boxes are perturbed, the round schedule."""

import numpy as np
import pytest
import torch

from segany.modeling.prompt_encoder import NEGATIVE_LABEL, PAD_LABEL, POSITIVE_LABEL
from segany.train.prompts import error_points, noisy_boxes, round_schedule, sample_pixels


def test_sampled_pixels_lie_in_their_region_and_cover_it_uniformly():
    region = torch.zeros(1, 6, 6, dtype=torch.bool)
    region[0, 1, 2] = region[0, 4, 0] = region[0, 5, 5] = True
    uniforms = torch.rand(3000, generator=torch.Generator().manual_seed(0))
    coords, found = sample_pixels(region.expand(3000, 6, 6), uniforms)
    assert found.all()
    picked = {(int(x), int(y)) for x, y in coords}
    assert picked == {(2, 1), (0, 4), (5, 5)}
    counts = np.unique([int(y) * 6 + int(x) for x, y in coords], return_counts=True)[1]
    assert counts.min() > 900  # about 1000 each


def test_empty_region_reports_not_found():
    coords, found = sample_pixels(torch.zeros(2, 4, 4, dtype=torch.bool), torch.tensor([0.3, 0.9]))
    assert not found.any()


def test_box_noise_is_ten_percent_of_the_side_capped_at_twenty_pixels():
    masks = torch.zeros(2, 400, 400, dtype=torch.bool)
    masks[0, 100:150, 100:130] = True  # 30 wide, 50 high: std 3 and 5 pixels
    masks[1, 0:400, 0:400] = True  # 400 wide: std capped at 20, and clamped to the image
    normals = torch.tensor([[1.0, 1.0, -1.0, -1.0], [-1.0, -1.0, 1.0, 1.0]])
    limits = torch.tensor([[400, 400], [400, 400]])
    boxes = noisy_boxes(masks, normals, limits)
    assert boxes[0].tolist() == pytest.approx([103, 105, 126, 144])
    assert boxes[1].tolist() == [0, 0, 399, 399]
    inner = noisy_boxes(masks[1:], torch.tensor([[1.0, 1.0, -1.0, -1.0]]), limits[1:])
    assert inner[0].tolist() == [20, 20, 379, 379]


def test_error_points_are_positive_on_misses_negative_on_false_alarms_and_padding_when_perfect():
    target = torch.zeros(3, 8, 8, dtype=torch.bool)
    target[:, 2:6, 2:6] = True
    predicted = target.clone()
    predicted[0, 2:6, 2:4] = False  # missed part -> positive click there
    predicted[1, 0, :] = True  # spill -> negative click there
    coords, labels = error_points(predicted, target, torch.tensor([0.5, 0.5, 0.5]))
    assert labels.tolist() == [POSITIVE_LABEL, NEGATIVE_LABEL, PAD_LABEL]
    x, y = coords[0].long()
    assert 2 <= x < 4 and 2 <= y < 6
    assert coords[1, 1] == 0


@pytest.mark.parametrize("rounds, points, mask_only", [(1, 0, 0), (2, 1, 0), (3, 1, 1), (5, 2, 2), (11, 8, 2)])
def test_round_schedule_matches_the_paper_shape(rounds, points, mask_only):
    schedule = round_schedule(rounds, np.random.default_rng(0))
    assert len(schedule) == rounds - 1
    assert sum(schedule) == points and schedule.count(False) == mask_only
    if mask_only:
        assert schedule[-1] is False


def test_round_schedule_places_the_inner_mask_only_round_at_random():
    places = {round_schedule(11, np.random.default_rng(seed))[:-1].index(False) for seed in range(60)}
    assert len(places) > 4
