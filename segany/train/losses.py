"""SAM's training losses: focal + dice on the best of the candidate masks, MSE on the IoU head.

An ambiguous prompt has several right answers, so the model emits three masks and only the
one closest to the ground truth is trained (the minimum rule); the IoU head learns to say
how good each of them is, which is what ranks them at inference time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss averaged over the last two (pixel) axes: one value per mask.

    ``alpha`` weighs foreground pixels (1 - alpha the background); a negative ``alpha`` turns
    the weighting off.
    """
    targets = targets.to(logits.dtype)
    probabilities = torch.sigmoid(logits)
    cross_entropy = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_correct = probabilities * targets + (1 - probabilities) * (1 - targets)
    loss = cross_entropy * (1 - p_correct) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss.mean(dim=(-2, -1))


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - soft Dice coefficient of sigmoid(logits) and the targets, per mask."""
    probabilities = torch.sigmoid(logits).flatten(-2)
    targets = targets.to(logits.dtype).flatten(-2)
    overlap = (probabilities * targets).sum(-1)
    return 1 - (2 * overlap + smooth) / (probabilities.sum(-1) + targets.sum(-1) + smooth)


def mask_iou(predicted: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """IoU of bool masks over the last two axes; two empty masks agree perfectly (1)."""
    predicted, targets = predicted.flatten(-2), targets.flatten(-2)
    intersection = (predicted & targets).sum(-1)
    union = (predicted | targets).sum(-1)
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(intersection, dtype=torch.float))


@dataclass
class MaskLosses:
    """Per-object loss terms of one prediction round (each a vector over the objects)."""

    total: torch.Tensor  # what is optimised: weighted mask loss of the best candidate + weighted IoU MSE
    focal: torch.Tensor  # of the best candidate
    dice: torch.Tensor
    iou_mse: torch.Tensor  # mean over the candidates
    best: torch.Tensor  # index of the candidate the mask loss was taken from


def sam_losses(
    logits: torch.Tensor,
    iou_predictions: torch.Tensor,
    targets: torch.Tensor,
    focal_weight: float = 20.0,
    dice_weight: float = 1.0,
    iou_weight: float = 1.0,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
) -> MaskLosses:
    """Loss terms for B objects with M candidate masks each.

    ``logits`` B x M x H x W, ``iou_predictions`` B x M, ``targets`` B x H x W (bool). Only the
    candidate with the lowest mask loss contributes mask gradients; every candidate's IoU
    prediction is pulled toward its true IoU with the target (a constant, not differentiated).
    """
    logits, iou_predictions = logits.float(), iou_predictions.float()
    expanded = targets[:, None].expand_as(logits)
    focal = sigmoid_focal_loss(logits, expanded, focal_alpha, focal_gamma)
    dice = dice_loss(logits, expanded)
    mask_loss = focal_weight * focal + dice_weight * dice
    best = mask_loss.detach().argmin(dim=1)
    pick = best[:, None]
    true_iou = mask_iou(logits.detach() > 0, expanded)
    iou_mse = ((iou_predictions - true_iou) ** 2).mean(dim=1)
    return MaskLosses(
        total=mask_loss.gather(1, pick)[:, 0] + iou_weight * iou_mse,
        focal=focal.gather(1, pick)[:, 0],
        dice=dice.gather(1, pick)[:, 0],
        iou_mse=iou_mse,
        best=best,
    )
