"""Each loss term against values computed by hand from its textbook formula."""

import math

import pytest
import torch

from segany.train.losses import dice_loss, mask_iou, sam_losses, sigmoid_focal_loss


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_focal_loss_matches_the_formula_pixel_by_pixel():
    logits = torch.tensor([[[2.0, -1.0], [0.5, -3.0]]])
    targets = torch.tensor([[[True, True], [False, False]]])
    expected = 0.0
    for x, t in ((2.0, 1), (-1.0, 1), (0.5, 0), (-3.0, 0)):
        p_t = sigmoid(x) if t else 1 - sigmoid(x)
        alpha_t = 0.25 if t else 0.75
        expected += -alpha_t * (1 - p_t) ** 2 * math.log(p_t)
    assert sigmoid_focal_loss(logits, targets).item() == pytest.approx(expected / 4, rel=1e-6)


def test_focal_loss_without_alpha_weighting_and_other_gamma():
    logits, targets = torch.tensor([[[1.0]]]), torch.tensor([[[False]]])
    p_t = 1 - sigmoid(1.0)
    expected = -(1 - p_t) ** 3 * math.log(p_t)
    assert sigmoid_focal_loss(logits, targets, alpha=-1, gamma=3).item() == pytest.approx(expected, rel=1e-6)


def test_dice_loss_matches_the_formula():
    logits = torch.tensor([[[0.0, 1.0], [-2.0, 3.0]]])
    targets = torch.tensor([[[True, False], [False, True]]])
    p = [sigmoid(v) for v in (0.0, 1.0, -2.0, 3.0)]
    overlap = p[0] + p[3]
    expected = 1 - (2 * overlap + 1) / (sum(p) + 2 + 1)
    assert dice_loss(logits, targets).item() == pytest.approx(expected, rel=1e-6)


def test_mask_iou_counts_pixels_and_treats_two_empty_masks_as_equal():
    a = torch.tensor([[True, True, False, False]]).reshape(1, 2, 2)
    b = torch.tensor([[True, False, True, False]]).reshape(1, 2, 2)
    assert mask_iou(a, b).item() == pytest.approx(1 / 3)
    empty = torch.zeros(1, 2, 2, dtype=torch.bool)
    assert mask_iou(empty, empty).item() == 1.0


def test_sam_losses_take_the_mask_loss_of_the_best_candidate_only():
    targets = torch.zeros(1, 4, 4, dtype=torch.bool)
    targets[0, :2] = True
    good = torch.where(targets[0], 5.0, -5.0)
    logits = torch.stack([-good, good, torch.zeros(4, 4)])[None].requires_grad_()
    iou_predictions = torch.tensor([[0.5, 0.5, 0.5]], requires_grad=True)
    losses = sam_losses(logits, iou_predictions, targets)

    assert losses.best.tolist() == [1]
    focal = sigmoid_focal_loss(good[None], targets)
    dice = dice_loss(good[None], targets)
    # true IoUs of the candidates: 0 (inverted), 1 (exact), 0 (all-zero logits predict nothing)
    iou_mse = ((0.5 - 0) ** 2 + (0.5 - 1) ** 2 + (0.5 - 0) ** 2) / 3
    assert losses.focal.item() == pytest.approx(focal.item(), rel=1e-6)
    assert losses.dice.item() == pytest.approx(dice.item(), rel=1e-6)
    assert losses.iou_mse.item() == pytest.approx(iou_mse, rel=1e-6)
    assert losses.total.item() == pytest.approx(20 * focal.item() + dice.item() + iou_mse, rel=1e-6)

    losses.total.sum().backward()
    assert logits.grad[0, 0].abs().sum() == 0 and logits.grad[0, 2].abs().sum() == 0
    assert logits.grad[0, 1].abs().sum() > 0
    assert torch.allclose(iou_predictions.grad, 2 * (iou_predictions.detach() - torch.tensor([[0.0, 1.0, 0.0]])) / 3)


def test_sam_losses_weights_are_applied():
    targets = torch.rand(2, 8, 8) > 0.5
    logits, ious = torch.randn(2, 1, 8, 8), torch.rand(2, 1)
    base = sam_losses(logits, ious, targets, focal_weight=0, dice_weight=0, iou_weight=1)
    assert torch.allclose(base.total, base.iou_mse)
    weighted = sam_losses(logits, ious, targets, focal_weight=3, dice_weight=2, iou_weight=0)
    assert torch.allclose(weighted.total, 3 * weighted.focal + 2 * weighted.dice)
