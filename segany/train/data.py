"""Training examples: per-image mask sampling, resizing to the model's input, augmentation, batching.

File formats are :mod:`segany.datasets`' business; this module turns any indexable dataset
of samples (``.image`` HxWx3 uint8, ``.masks`` list of HxW bool) into what a training step
needs. Every random choice is a function of (seed, position in the data stream), where
position = step x batch_size + slot, so a resumed run or a differently sharded one sees
exactly the same examples.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol, Sequence

import cv2
import numpy as np
import torch
from torch.nn import functional as F

from segany.train.config import DataConfig, SourceConfig
from segany.transforms import ResizeLongestSide

log = logging.getLogger("segany.train")
SKIPPABLE_ERRORS = (OSError, ValueError, KeyError)


class MaskSample(Protocol):
    image: np.ndarray
    masks: Sequence[np.ndarray]


@dataclass
class TrainingExample:
    """One image ready for the model: resized (and augmented) pixels and its sampled object masks."""

    image: np.ndarray  # h x w x 3 uint8, h, w <= image_size
    masks: np.ndarray  # N x h x w bool, N >= 1
    prompt_seed: int  # seeds this image's simulated prompts
    position: int  # where in the data stream it came from


@dataclass
class SceneSample:
    image: np.ndarray
    masks: list[np.ndarray]


class SceneSource:
    """``count`` procedural scenes (:mod:`segany.train.scenes`) as an indexable dataset."""

    def __init__(self, coco_mval: str | os.PathLike, count: int, size: int, seed: int) -> None:
        from segany.train.scenes import SceneGenerator, coco_mval_sources

        photos, cutouts = coco_mval_sources(Path(coco_mval))
        self.generator = SceneGenerator(photos, cutouts, size=size, seed=seed)
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> SceneSample:
        if not 0 <= index < self.count:
            raise IndexError(index)
        return SceneSample(*self.generator.scene(index))


class WeightedMix:
    """Several sources drawn from in proportion to their weights (with replacement), deterministically.

    Its length is the sources' total, so an "epoch" of the mix is as long as all of them together.
    """

    def __init__(self, sources: list[Sequence[MaskSample]], weights: list[float], seed: int) -> None:
        self.sources = sources
        self.probabilities = np.asarray(weights, dtype=np.float64) / sum(weights)
        self.seed = seed

    def __len__(self) -> int:
        return sum(len(source) for source in self.sources)

    def __getitem__(self, index: int) -> MaskSample:
        rng = np.random.default_rng([self.seed, index, 3])
        source = self.sources[int(rng.choice(len(self.sources), p=self.probabilities))]
        return source[int(rng.integers(len(source)))]


def open_source(source: SourceConfig, seed: int) -> Sequence[MaskSample]:
    """One configured source; a dataset comes from :func:`segany.datasets.open_dataset`."""
    if source.kind == "scenes":
        if source.coco_mval is None:
            raise ValueError("a data source of kind 'scenes' needs coco_mval: a COCO-MVal-layout folder")
        return SceneSource(source.coco_mval, source.count, source.size, seed)
    if source.path is None:
        raise ValueError("a data source of kind 'dataset' needs path: a dataset file or folder")
    from segany.datasets import open_dataset

    dataset = open_dataset(source.path)
    if len(dataset) == 0:
        raise ValueError(f"training data {source.path} holds no images")
    return dataset


def open_training_data(config: DataConfig, seed: int = 0) -> Sequence[MaskSample]:
    """The training images of ``data.path`` or of the weighted mix ``data.sources``."""
    sources = config.sources or ([SourceConfig(path=config.path)] if config.path else [])
    if not sources:
        raise ValueError("no training data: set data.path or data.sources in the config, or pass --data PATH")
    opened = [open_source(source, seed) for source in sources]
    if len(opened) == 1:
        return opened[0]
    return WeightedMix(opened, [source.weight for source in sources], seed)


class TrainingSet(torch.utils.data.Dataset):
    """Examples addressed by stream position: epoch e visits the images in a seeded random order."""

    def __init__(self, source: Sequence[MaskSample], image_size: int, config: DataConfig, seed: int = 0) -> None:
        if len(source) == 0:
            raise ValueError("training data holds no images")
        self.source = source
        self.image_size = image_size
        self.config = config
        self.seed = seed
        self._reported: set[int] = set()
        self._orders: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.source)

    def _order(self, epoch: int) -> np.ndarray:
        """The image order of ``epoch`` (only the latest epoch's is kept)."""
        if epoch not in self._orders:
            self._orders = {epoch: np.random.default_rng([self.seed, epoch]).permutation(len(self.source))}
        return self._orders[epoch]

    def __getitem__(self, position: int) -> TrainingExample:
        """The example at ``position``; unreadable or mask-less images are reported and the next one taken."""
        count = len(self.source)
        epoch, offset = divmod(position, count)
        rng = np.random.default_rng([self.seed, position, 1])
        for attempt in range(count):
            index = int(self._order(epoch)[(offset + attempt) % count])
            try:  # datasets may read lazily: the image and masks are only read here
                sample = self.source[index]
                image, masks = sample.image, list(sample.masks)
            except SKIPPABLE_ERRORS as error:
                self._report(index, f"skipping training image {index}: {error}")
                continue
            example = self.make_example(image, masks, rng, position)
            if example is not None:
                return example
            self._report(index, f"skipping training image {index}: no usable masks")
        raise ValueError("no training image could be read or has usable masks")

    def _report(self, index: int, message: str) -> None:
        if index not in self._reported:
            self._reported.add(index)
            log.warning(message)

    def make_example(
        self, image: np.ndarray, masks: list[np.ndarray], rng: np.random.Generator, position: int = 0
    ) -> TrainingExample | None:
        """Resize (with optional scale jitter, crop, flip) and sample up to N masks; None if none is left."""
        height, width = image.shape[:2]
        area_limit = self.config.max_mask_area * height * width
        candidates = [m for m in masks if m.shape == (height, width) and 0 < np.count_nonzero(m) <= area_limit]
        if not candidates:
            return None
        long_side = self.image_size
        if self.config.scale_jitter is not None:
            low, high = self.config.scale_jitter
            long_side = max(1, round(self.image_size * rng.uniform(low, high)))
        resize = ResizeLongestSide(long_side)
        new_h, new_w = resize.get_preprocess_shape(height, width, long_side)
        top = int(rng.integers(0, max(new_h - self.image_size, 0) + 1))
        left = int(rng.integers(0, max(new_w - self.image_size, 0) + 1))
        window = (slice(top, top + self.image_size), slice(left, left + self.image_size))
        flip = self.config.horizontal_flip and rng.random() < 0.5

        def place(array: np.ndarray) -> np.ndarray:
            array = array[window]
            return np.ascontiguousarray(array[:, ::-1] if flip else array)

        interpolation = cv2.INTER_AREA if new_h < height else cv2.INTER_LINEAR
        chosen = []
        for index in rng.permutation(len(candidates)):
            scaled = cv2.resize(candidates[index].astype(np.uint8) * 255, (new_w, new_h), interpolation=interpolation)
            mask = place(scaled > 127)
            if mask.any():
                chosen.append(mask)
                if len(chosen) == self.config.masks_per_image:
                    break
        if not chosen:
            return None
        pixels = place(resize.apply_image(image))
        return TrainingExample(pixels, np.stack(chosen), int(rng.integers(2**62)), position)


class StepSampler(torch.utils.data.Sampler):
    """This process's microbatches of stream positions, step after step from ``start_step``.

    Step t's global batch is positions t*B .. t*B+B-1; process r of W takes every W-th of
    them from r, split into ``accumulation`` microbatches.
    """

    def __init__(self, start_step: int, steps: int, batch_size: int, rank: int = 0, world_size: int = 1,
                 accumulation: int = 1) -> None:
        self.start_step, self.steps = start_step, steps
        self.batch_size, self.rank, self.world_size, self.accumulation = batch_size, rank, world_size, accumulation

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.steps):
            mine = list(range(step * self.batch_size + self.rank, (step + 1) * self.batch_size, self.world_size))
            size = len(mine) // self.accumulation
            for part in range(self.accumulation):
                yield mine[part * size : (part + 1) * size]

    def __len__(self) -> int:
        return (self.steps - self.start_step) * self.accumulation


def as_list(examples: list[TrainingExample]) -> list[TrainingExample]:
    """Collation that keeps examples as they are (images differ in size until padded on device)."""
    return examples


def data_loader(dataset: TrainingSet, sampler: StepSampler, workers: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=workers, collate_fn=as_list, persistent_workers=False,
        prefetch_factor=2 if workers > 0 else None,
    )


@dataclass
class DeviceBatch:
    """A microbatch on the training device, padded to the square model input.

    Objects of all images are laid end to end; ``owner`` says which image each belongs to.
    """

    images: torch.Tensor  # B x 3 x S x S uint8 (zero padding right and bottom)
    image_sizes: list[tuple[int, int]]  # (h, w) of each image before padding
    masks: torch.Tensor  # N x S x S bool
    owner: torch.Tensor  # N image indices
    limits: torch.Tensor  # N x 2: (width, height) of the owner image, to keep prompts inside it
    prompt_seeds: list[int]
    counts: list[int]  # objects per image

    @classmethod
    def from_examples(cls, examples: list[TrainingExample], image_size: int, device: torch.device | str) -> "DeviceBatch":
        images, masks, owner, limits = [], [], [], []
        for index, example in enumerate(examples):
            height, width = example.image.shape[:2]
            pad = (0, image_size - width, 0, image_size - height)
            images.append(F.pad(torch.from_numpy(example.image).permute(2, 0, 1), pad))
            masks.append(F.pad(torch.from_numpy(example.masks), pad))
            owner += [index] * len(example.masks)
            limits += [(width, height)] * len(example.masks)
        return cls(
            images=torch.stack(images).to(device),
            image_sizes=[example.image.shape[:2] for example in examples],
            masks=torch.cat(masks).to(device),
            owner=torch.tensor(owner, device=device),
            limits=torch.tensor(limits, device=device),
            prompt_seeds=[example.prompt_seed for example in examples],
            counts=[len(example.masks) for example in examples],
        )


def low_res_targets(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """N x S x S bool masks downsampled to the decoder's output size (pixel majority by area)."""
    return F.interpolate(masks[:, None].float(), size=size, mode="area")[:, 0] > 0.5
