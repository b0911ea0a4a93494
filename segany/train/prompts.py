"""Simulated user prompts for interactive training (SAM paper, appendix A).

The first prompt for an object is a foreground point drawn uniformly from its mask or its
bounding box with noise; each later point is drawn uniformly from where the previous
prediction is wrong (positive on a miss, negative on a false alarm). Random numbers come
from a per-image generator and are drawn up front, so an image gets the same prompts
whichever process trains on it and however the batch is split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from segany.masks import masks_to_boxes
from segany.modeling.prompt_encoder import NEGATIVE_LABEL, PAD_LABEL, POSITIVE_LABEL


@dataclass
class PromptDraws:
    """The random numbers behind one batch of objects' prompts (N objects)."""

    use_box: torch.Tensor  # N bool: box rather than point as the first prompt
    first_point: torch.Tensor  # N uniforms picking the first point inside the mask
    box_noise: torch.Tensor  # N x 4 standard normals, one per box coordinate
    later_points: torch.Tensor  # N x R uniforms, one per later round, picking a point in the error region

    @classmethod
    def draw(cls, generator: torch.Generator, count: int, rounds: int, box_probability: float) -> "PromptDraws":
        return cls(
            use_box=torch.rand(count, generator=generator) < box_probability,
            first_point=torch.rand(count, generator=generator),
            box_noise=torch.randn(count, 4, generator=generator),
            later_points=torch.rand(count, rounds, generator=generator),
        )

    @classmethod
    def concatenate(cls, parts: list["PromptDraws"]) -> "PromptDraws":
        return cls(*(torch.cat([getattr(p, name) for p in parts]) for name in ("use_box", "first_point", "box_noise", "later_points")))

    def to(self, device: torch.device | str) -> "PromptDraws":
        return PromptDraws(self.use_box.to(device), self.first_point.to(device), self.box_noise.to(device),
                           self.later_points.to(device))


def sample_pixels(regions: torch.Tensor, uniforms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One pixel drawn uniformly from each of N x H x W bool ``regions``, using one uniform each.

    The uniform picks the k-th set pixel in raster order (k = floor(u * count)), which takes
    one number per region instead of one per pixel and gives the same answer on any device.
    Returns (N x 2 float pixel (x, y), N bool: whether the region had any pixel).
    """
    width = regions.shape[-1]
    flat = regions.flatten(1)
    running = flat.to(torch.int32).cumsum(1, dtype=torch.int32)
    counts = running[:, -1]
    rank = (uniforms * counts).floor().to(torch.int32).clamp(max=(counts - 1).clamp(min=0))
    index = torch.searchsorted(running, (rank + 1)[:, None]).squeeze(1).clamp(max=flat.shape[1] - 1)
    coords = torch.stack([index % width, torch.div(index, width, rounding_mode="floor")], dim=1)
    return coords.float(), counts > 0


def noisy_boxes(
    masks: torch.Tensor, normals: torch.Tensor, limits: torch.Tensor, fraction: float = 0.1, max_pixels: float = 20.0
) -> torch.Tensor:
    """Bounding boxes (XYXY) of N x H x W masks with Gaussian noise on each coordinate.

    The noise's std is ``fraction`` of the box side (width for x, height for y), capped at
    ``max_pixels``; boxes stay inside the image, whose (width, height) per object is ``limits``.
    """
    boxes = masks_to_boxes(masks).float()
    sides = (boxes[:, 2:] - boxes[:, :2] + 1).repeat(1, 2)  # w, h, w, h
    noisy = boxes + normals * (fraction * sides).clamp(max=max_pixels)
    upper = (limits.float() - 1).repeat(1, 2)
    noisy = torch.minimum(noisy.clamp(min=0), upper)
    low, high = torch.minimum(noisy[:, :2], noisy[:, 2:]), torch.maximum(noisy[:, :2], noisy[:, 2:])
    return torch.cat([low, high], dim=1)


def error_points(predicted: torch.Tensor, targets: torch.Tensor, uniforms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A corrective click per object, drawn uniformly from where ``predicted`` disagrees with ``targets``.

    The label is positive where the object was missed, negative where the prediction spills
    over; an object predicted perfectly gets a padding point (label -1), which the prompt
    encoder treats as no point at all. Returns (N x 2 pixel (x, y), N labels).
    """
    coords, found = sample_pixels(predicted ^ targets, uniforms)
    x, y = coords[:, 0].long(), coords[:, 1].long()
    on_object = targets[torch.arange(len(targets), device=targets.device), y, x]
    labels = torch.where(on_object, POSITIVE_LABEL, NEGATIVE_LABEL)
    labels = torch.where(found, labels, PAD_LABEL)
    return coords * found[:, None], labels


def round_schedule(rounds: int, rng: np.random.Generator) -> list[bool]:
    """For each round after the first: True if it adds an error point, False if it only feeds the mask back.

    The paper's 11 rounds are 1 first prompt + 8 error-point rounds + 2 mask-only rounds,
    one at a random place among the point rounds and one at the end. Fewer rounds (for CPU
    runs) keep that shape: 2 rounds = one error point; 3 = one error point and a final
    mask-only round; r >= 4 = r - 3 error points and both mask-only rounds.
    """
    if rounds <= 3:
        return [True, False][: rounds - 1]
    schedule = [True] * (rounds - 3)
    schedule.insert(int(rng.integers(0, len(schedule))), False)
    return schedule + [False]
