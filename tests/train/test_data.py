"""Training examples: resizing, mask sampling, augmentation, skipping bad images, batching, mixing."""

import logging

import numpy as np
import pytest

from segany.train.config import DataConfig, SourceConfig
from segany.train.data import DeviceBatch, StepSampler, TrainingSet, WeightedMix, open_training_data

from train_samples import Sample, synthetic_samples


def test_examples_are_resized_to_the_model_side_with_at_most_n_masks(samples):
    many = Sample(samples[0].image, samples[0].masks * 5)
    dataset = TrainingSet([many], image_size=64, config=DataConfig(masks_per_image=3))
    example = dataset[0]
    assert example.image.shape == (48, 64, 3) and example.image.dtype == np.uint8
    assert example.masks.shape == (3, 48, 64) and example.masks.dtype == bool
    assert all(mask.any() for mask in example.masks)


def test_masks_over_the_area_limit_or_empty_are_not_sampled():
    image = np.zeros((20, 20, 3), np.uint8)
    full, empty, small = np.ones((20, 20), bool), np.zeros((20, 20), bool), np.zeros((20, 20), bool)
    small[5:10, 5:10] = True
    example = TrainingSet([Sample(image, [full, empty, small])], 20, DataConfig())[0]
    assert len(example.masks) == 1 and example.masks[0].sum() == 25


def test_flip_and_scale_jitter_keep_image_and_masks_aligned(samples):
    config = DataConfig(horizontal_flip=True, scale_jitter=[0.5, 2.0])
    dataset = TrainingSet(samples, 64, config, seed=1)
    shapes = set()
    for position in range(12):
        example = dataset[position]
        assert max(example.image.shape[:2]) <= 64 and example.masks.shape[1:] == example.image.shape[:2]
        colours = example.image[example.masks[0]].reshape(-1, 3)
        assert np.median(np.abs(colours - np.median(colours, axis=0)), axis=0).max() <= 8  # one flat object
        shapes.add(example.image.shape)
    assert len(shapes) > 1


class FlakySource:
    """Image 1 is missing on disk; the others read fine."""

    def __init__(self, samples):
        self.samples = samples

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        if index == 1:
            raise FileNotFoundError("image 1.jpg is missing")
        return self.samples[index]


def test_corrupt_image_file_in_a_real_dataset_folder_is_skipped(tmp_path, caplog):
    """Files are read lazily by segany.datasets: the error surfaces on first access and is skipped."""
    from PIL import Image

    from segany.datasets import open_dataset

    sample = synthetic_samples(1)[0]
    (tmp_path / "img").mkdir()
    (tmp_path / "gt").mkdir()
    for name in ("good", "bad"):
        Image.fromarray(sample.image).save(tmp_path / "img" / f"{name}.jpg")
        Image.fromarray(sample.masks[0].astype(np.uint8) * 255).save(tmp_path / "gt" / f"{name}.png")
    (tmp_path / "img" / "bad.jpg").write_bytes(b"not an image")
    source = open_dataset(tmp_path)
    assert len(source) == 2
    dataset = TrainingSet(source, 64, DataConfig(), seed=0)
    with caplog.at_level(logging.WARNING, logger="segany.train"):
        examples = [dataset[position] for position in range(4)]
    assert all(len(example.masks) == 1 for example in examples)
    assert any("skipping training image" in record.message for record in caplog.records)


def test_unreadable_images_are_reported_once_and_skipped(samples, caplog):
    dataset = TrainingSet(FlakySource(samples), 64, DataConfig(), seed=0)
    with caplog.at_level(logging.WARNING, logger="segany.train"):
        examples = [dataset[position] for position in range(9)]
    assert len(examples) == 9
    assert [r.message for r in caplog.records].count("skipping training image 1: image 1.jpg is missing") == 1


def test_same_position_gives_the_same_example_and_epochs_reshuffle(samples):
    a, b = TrainingSet(samples, 64, DataConfig(), seed=3), TrainingSet(samples, 64, DataConfig(), seed=3)
    assert all(np.array_equal(a[p].image, b[p].image) and a[p].prompt_seed == b[p].prompt_seed for p in range(6))
    orders = {tuple(int(a[p].image.sum()) for p in range(e * 3, e * 3 + 3)) for e in range(6)}
    assert len(orders) > 1


def test_processes_and_accumulation_split_each_step_batch_without_overlap():
    single = list(StepSampler(2, 4, batch_size=4))
    assert single == [[8, 9, 10, 11], [12, 13, 14, 15]]
    shards = [list(StepSampler(2, 4, 4, rank=r, world_size=2, accumulation=2)) for r in range(2)]
    for step in range(2):
        parts = [p for shard in shards for p in shard[2 * step : 2 * step + 2]]
        assert sorted(i for part in parts for i in part) == single[step]


def test_device_batch_pads_images_and_masks_to_the_square_input(samples):
    dataset = TrainingSet(samples, 64, DataConfig(masks_per_image=2))
    batch = DeviceBatch.from_examples([dataset[0], dataset[1]], 64, "cpu")
    assert batch.images.shape == (2, 3, 64, 64) and batch.masks.shape == (4, 64, 64)
    assert batch.owner.tolist() == [0, 0, 1, 1] and batch.limits.tolist() == [[64, 48]] * 4
    assert batch.images[:, :, 48:].sum() == 0 and not batch.masks[:, 48:].any()


def test_weighted_mix_draws_by_weight_deterministically():
    first, second = synthetic_samples(2, seed=1), synthetic_samples(2, seed=2)
    mix = WeightedMix([first, second], [3.0, 1.0], seed=0)
    assert len(mix) == 4
    drawn = [mix[i] for i in range(400)]
    share = sum(any(sample is s for s in first) for sample in drawn) / 400
    assert 0.68 < share < 0.82
    assert all(mix[i] is drawn[i] for i in range(20))


def test_missing_data_settings_are_clear_errors():
    with pytest.raises(ValueError, match="no training data"):
        open_training_data(DataConfig())
    with pytest.raises(ValueError, match="coco_mval"):
        open_training_data(DataConfig(sources=[SourceConfig(kind="scenes")]))
    with pytest.raises(FileNotFoundError, match="img"):
        open_training_data(DataConfig(sources=[SourceConfig(kind="scenes", coco_mval="/nonexistent")]))


def test_scene_source_feeds_training_examples():
    from pathlib import Path

    root = Path("/work/shared/datasets/COCO_MVal")
    if not (root / "img").is_dir():
        pytest.skip("COCO_MVal not available")
    config = DataConfig(sources=[SourceConfig(kind="scenes", coco_mval=str(root), count=3, size=96)])
    source = open_training_data(config)
    assert len(source) == 3
    example = TrainingSet(source, 64, DataConfig(masks_per_image=4))[0]
    assert example.image.shape == (64, 64, 3) and 1 <= len(example.masks) <= 4
