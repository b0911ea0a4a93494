"""Crop-embedding first prompts, to train a text-promptable model (SAM paper, section 7.5).

With probability ``text.probability`` an object's first prompt is the CLIP image embedding
of the (enlarged) crop around its mask instead of a point or a box; the later rounds add
corrective points to it as usual. Because CLIP aligns image and text embeddings, the
trained model then takes the text embedding of a phrase in place of the crop's. The choice
is drawn from the image's prompt seed (so it does not depend on batching), and embeddings
are cached on disk by crop pixels and CLIP weights: without augmentation every epoch
yields the same crops.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from segany.embedding_cache import EmbeddingCache
from segany.text import PromptEmbedder, embed_crops, mask_crop
from segany.train.config import TextConfig
from segany.train.data import TrainingExample

TEXT_STREAM = 5  # keeps this choice's random numbers apart from the image's other draws


@dataclass
class TextPrompts:
    """For N objects: which are prompted by their crop embedding, and those embeddings."""

    chosen: torch.Tensor  # N bool
    embeddings: torch.Tensor  # N x D, zero where not chosen

    def to(self, device: torch.device | str) -> "TextPrompts":
        return TextPrompts(self.chosen.to(device), self.embeddings.to(device))


class CropPrompter:
    """Draws the text-prompted objects of a microbatch and embeds their crops through the cache."""

    def __init__(self, config: TextConfig, embedder: PromptEmbedder, cache_dir: str | os.PathLike) -> None:
        self.config = config
        self.embedder = embedder
        self.cache = EmbeddingCache(cache_dir)

    def chosen(self, example: TrainingExample) -> np.ndarray:
        """Which of the example's objects get a crop-embedding first prompt."""
        draws = np.random.default_rng([example.prompt_seed, TEXT_STREAM]).random(len(example.masks))
        large = example.masks.reshape(len(example.masks), -1).sum(axis=1) >= self.config.min_mask_area
        return (draws < self.config.probability) & large

    def prompts(self, examples: list[TrainingExample]) -> TextPrompts:
        """The microbatch's objects in order (as in ``DeviceBatch``), on the CPU."""
        picks = [self.chosen(example) for example in examples]
        crops = [
            mask_crop(example.image, mask, self.config.crop_expand)
            for example, picked in zip(examples, picks)
            for mask in example.masks[picked]
        ]
        chosen = torch.from_numpy(np.concatenate(picks))
        embeddings = torch.zeros(len(chosen), self.embedder.embed_dim)
        embeddings[chosen] = embed_crops(self.embedder, crops, self.cache)
        return TextPrompts(chosen, embeddings)
