"""The optimiser and learning-rate schedule of SAM's recipe: AdamW, layer-wise decay, warm-up, steps.

Layer-wise learning-rate decay gives the image encoder's early layers smaller steps than its
late ones (pre-trained low-level features should move least). Depth is read off the
encoder's main stack of blocks, so any encoder with one (ViT blocks, EfficientNet stages)
gets it; an encoder without one is trained at the full rate.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import nn

from segany.train.config import OptimConfig

log = logging.getLogger("segany.train")


def _block_stack(encoder: nn.Module) -> str | None:
    """Name of the encoder's longest direct ``ModuleList`` child (its stack of blocks), if any."""
    stacks = [(len(child), name) for name, child in encoder.named_children() if isinstance(child, nn.ModuleList)]
    return max(stacks)[1] if stacks else None


def encoder_layer_ids(encoder: nn.Module) -> tuple[dict[str, int], int]:
    """Layer index of each encoder parameter and the number of blocks.

    Parameters before the block stack (patch embedding, positions, stem) are layer 0,
    block i is layer i + 1, and what follows (the neck) is layer depth + 1.
    """
    stack = _block_stack(encoder)
    if stack is None:
        return {}, 0
    depth = len(getattr(encoder, stack))
    ids: dict[str, int] = {}
    after = False
    for name, _ in encoder.named_parameters(recurse=False):
        ids[name] = 0
    for child_name, child in encoder.named_children():
        if child_name == stack:
            after = True
            for name, _ in child.named_parameters():
                ids[f"{child_name}.{name}"] = 1 + int(name.split(".")[0])
            continue
        for name, _ in child.named_parameters():
            ids[f"{child_name}.{name}"] = depth + 1 if after else 0
    return ids, depth


def parameter_groups(model: nn.Module, config: OptimConfig) -> list[dict]:
    """AdamW groups of the trainable parameters: lr scaled by layer depth, no decay on 1-D and positions."""
    encoder_ids, depth = encoder_layer_ids(model.image_encoder)
    if depth == 0 and config.layer_decay < 1:
        log.warning("the image encoder has no stack of blocks: layer-wise lr decay is not applied to it")
    grouped: dict[tuple[float, float], list[nn.Parameter]] = defaultdict(list)
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        scale = 1.0
        if name.startswith("image_encoder.") and depth > 0:
            scale = config.layer_decay ** (depth + 1 - encoder_ids[name.removeprefix("image_encoder.")])
        no_decay = parameter.ndim <= 1 or name.endswith("pos_embed")
        grouped[(scale, 0.0 if no_decay else config.weight_decay)].append(parameter)
    if not grouped:
        raise ValueError("nothing to train: every module is frozen (model.freeze)")
    return [
        {"params": params, "lr": config.lr * scale, "weight_decay": decay}
        for (scale, decay), params in sorted(grouped.items(), key=lambda item: item[0])
    ]


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(parameter_groups(model, config), lr=config.lr, betas=tuple(config.betas))


@dataclass
class RecipeSchedule:
    """Learning-rate factor at a step: linear warm-up, then a constant rate cut at each decay step."""

    warmup_steps: int
    warmup_start_factor: float
    decay_steps: list[int]
    decay_factor: float

    def __call__(self, step: int) -> float:
        factor = self.decay_factor ** sum(step >= milestone for milestone in self.decay_steps)
        if step < self.warmup_steps:
            factor *= self.warmup_start_factor + (1 - self.warmup_start_factor) * step / self.warmup_steps
        return factor


def build_scheduler(optimizer: torch.optim.Optimizer, config: OptimConfig) -> torch.optim.lr_scheduler.LambdaLR:
    schedule = RecipeSchedule(config.warmup_steps, config.warmup_start_factor, list(config.decay_steps),
                              config.decay_factor)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
