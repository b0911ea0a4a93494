"""One training pass of SAM's simulated interactive segmentation (SAM paper, appendix A).

The image encoder runs once per image; the prompt encoder and mask decoder then run for
several rounds per object. Round 1 prompts with a point (three candidate masks), a box
(one mask) or, to train for text prompts, the CLIP embedding of the object's crop (three
candidate masks: a name can be as ambiguous as a point); each later round adds a
corrective point from the current error region and feeds back the unthresholded low-res
logits of the mask the model ranked best; mask-only rounds add no point. Every round's
prediction is trained, and the loss of an object is the mean over its rounds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from segany.modeling import Sam
from segany.train.config import LossConfig, PromptConfig
from segany.train.data import DeviceBatch, low_res_targets
from segany.train.losses import mask_iou, sam_losses
from segany.train.prompts import PromptDraws, error_points, noisy_boxes, sample_pixels
from segany.train.text_prompts import TextPrompts

STAT_NAMES = ("loss", "focal", "dice", "iou_mse", "miou_first", "miou")


@dataclass
class _PromptGroup:
    """Objects that share a prompt structure (point-, box- or text-first), with their prompts so far."""

    index: torch.Tensor
    coords: torch.Tensor  # n x k x 2
    labels: torch.Tensor  # n x k
    boxes: torch.Tensor | None  # n x 4 for the box-first group
    text: torch.Tensor | None = None  # n x 1 x D for the text-first group


class InteractiveSegmentation(nn.Module):
    """Wraps a Sam so that one forward call is one interactive training pass (what DDP wraps)."""

    def __init__(self, sam: Sam, prompts: PromptConfig, loss: LossConfig) -> None:
        super().__init__()
        self.sam = sam
        self.prompts = prompts
        self.loss = loss

    def embed(self, images: torch.Tensor, sizes: list[tuple[int, int]]) -> torch.Tensor:
        """Image embeddings of B x 3 x S x S uint8 images whose content is the top-left (h, w) of each.

        Each image goes through ``Sam.preprocess`` unpadded, so that its padding is zero after
        normalisation exactly as at inference.
        """
        pixels = [self.sam.preprocess(image[:, :height, :width].float()) for image, (height, width) in zip(images, sizes)]
        return self.sam.image_encoder(torch.stack(pixels))

    def forward(
        self,
        batch: DeviceBatch,
        draws: PromptDraws,
        schedule: list[bool],
        embeddings: torch.Tensor | None = None,
        text: TextPrompts | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run 1 + len(schedule) rounds; ``schedule[i]`` says whether round i + 2 adds a point.

        ``embeddings`` (B x C x h x w) stand in for the encoder when it is frozen; ``text``
        makes its chosen objects text-first (their crop embedding replaces point and box).
        Returns the sum over objects of each object's loss (differentiable) and the sums over
        objects of STAT_NAMES (loss terms averaged over rounds; IoU of the first and last
        round's mask).
        """
        if embeddings is None:
            embeddings = self.embed(batch.images, batch.image_sizes)
        object_embeddings = embeddings[batch.owner]
        image_pe = self.sam.prompt_encoder.get_dense_pe()
        targets = low_res_targets(batch.masks, self.sam.prompt_encoder.mask_input_size)
        valid = self._inside_image(batch)
        groups = self._first_prompts(batch, draws, text)

        rounds = 1 + len(schedule)
        count = len(batch.masks)
        loss_sum = embeddings.new_zeros((), dtype=torch.float32)
        stat_sums = torch.zeros(len(STAT_NAMES), device=embeddings.device)
        mask_input: torch.Tensor | None = None
        for round_index in range(rounds):
            if round_index > 0 and schedule[round_index - 1]:
                predicted = self._upscale(mask_input) & valid
                coords, labels = error_points(predicted, batch.masks, draws.later_points[:, round_index - 1])
                for group in groups:
                    group.coords = torch.cat([group.coords, coords[group.index, None]], dim=1)
                    group.labels = torch.cat([group.labels, labels[group.index, None]], dim=1)
            chosen = torch.empty(count, *targets.shape[1:], device=embeddings.device)
            for group in groups:
                if len(group.index) == 0:
                    continue
                multimask = round_index == 0 and group.boxes is None
                logits, iou_predictions = self._decode(group, object_embeddings, image_pe, mask_input, multimask)
                group_targets = targets[group.index]
                losses = sam_losses(logits, iou_predictions, group_targets, self.loss.focal_weight,
                                    self.loss.dice_weight, self.loss.iou_weight, self.loss.focal_alpha,
                                    self.loss.focal_gamma)
                loss_sum = loss_sum + losses.total.sum() / rounds
                best = iou_predictions.detach().argmax(dim=1)
                picked = logits.detach()[torch.arange(len(best), device=best.device), best].float()
                chosen[group.index] = picked
                stat_sums[:4] += torch.stack([losses.total.sum(), losses.focal.sum(), losses.dice.sum(),
                                              losses.iou_mse.sum()]).detach() / rounds
                if round_index in (0, rounds - 1):
                    iou = mask_iou(picked > 0, group_targets).sum()
                    if round_index == 0:
                        stat_sums[4] += iou
                    if round_index == rounds - 1:
                        stat_sums[5] += iou
            mask_input = chosen[:, None]
        return loss_sum, stat_sums

    def _first_prompts(self, batch: DeviceBatch, draws: PromptDraws, text: TextPrompts | None) -> list[_PromptGroup]:
        points, _ = sample_pixels(batch.masks, draws.first_point)
        boxes = noisy_boxes(batch.masks, draws.box_noise, batch.limits, self.prompts.box_noise,
                            self.prompts.box_noise_max)
        by_text = text.chosen if text is not None else torch.zeros_like(draws.use_box)
        by_point = (~draws.use_box & ~by_text).nonzero()[:, 0]
        by_box = (draws.use_box & ~by_text).nonzero()[:, 0]
        device = batch.masks.device
        groups = [
            _PromptGroup(by_point, points[by_point, None], torch.ones(len(by_point), 1, dtype=torch.long, device=device), None),
            _PromptGroup(by_box, points.new_zeros(len(by_box), 0, 2), torch.zeros(len(by_box), 0, dtype=torch.long,
                                                                                  device=device), boxes[by_box]),
        ]
        if text is not None:
            index = by_text.nonzero()[:, 0]
            groups.append(_PromptGroup(index, points.new_zeros(len(index), 0, 2),
                                       torch.zeros(len(index), 0, dtype=torch.long, device=device), None,
                                       text.embeddings[index, None]))
        return groups

    def _decode(
        self,
        group: _PromptGroup,
        object_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        mask_input: torch.Tensor | None,
        multimask: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        points = (group.coords, group.labels) if group.coords.shape[1] > 0 else None
        sparse, dense = self.sam.prompt_encoder(
            points=points,
            boxes=group.boxes,
            masks=None if mask_input is None else mask_input[group.index],
            text=group.text,
        )
        return self.sam.mask_decoder(
            image_embeddings=object_embeddings[group.index],
            image_pe=image_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )

    def _upscale(self, low_res_logits: torch.Tensor) -> torch.Tensor:
        """Low-res logits (N x 1 x h x w) to a bool mask of the padded model input, as at inference."""
        size = self.sam.image_encoder.img_size
        return F.interpolate(low_res_logits, size=(size, size), mode="bilinear", align_corners=False)[:, 0] > 0

    @staticmethod
    def _inside_image(batch: DeviceBatch) -> torch.Tensor:
        """N x S x S: True on the pixels of each object's image (not its padding)."""
        size = batch.masks.shape[-1]
        positions = torch.arange(size, device=batch.masks.device)
        inside_x = positions[None, None, :] < batch.limits[:, 0, None, None]
        inside_y = positions[None, :, None] < batch.limits[:, 1, None, None]
        return inside_x & inside_y
