"""The embedding cache returns what the encoder would, and is keyed by image and weights."""

from __future__ import annotations

import numpy as np
import torch

import segany
from segany.embedding_cache import EmbeddingCache, model_fingerprint, set_image_cached


def test_cache_hit_gives_same_predictions(tmp_path, rng):
    torch.manual_seed(0)
    model = segany.build_sam("tiny")
    image = rng.integers(0, 256, (40, 70, 3), dtype=np.uint8)
    cache = EmbeddingCache(tmp_path)
    first, second = segany.SamPredictor(model), segany.SamPredictor(model)
    assert set_image_cached(first, image, cache) is False
    assert set_image_cached(second, image, cache) is True
    assert torch.equal(first.features, second.features)
    assert second.original_size == (40, 70) and second.input_size == first.input_size
    prompt = dict(point_coords=np.array([[10.0, 20.0]]), point_labels=np.array([1]))
    for a, b in zip(first.predict(**prompt), second.predict(**prompt)):
        np.testing.assert_array_equal(a, b)


def test_cache_is_keyed_by_weights_and_pixels(tmp_path, rng):
    torch.manual_seed(0)
    model_a = segany.build_sam("tiny")
    torch.manual_seed(1)
    model_b = segany.build_sam("tiny")
    assert model_fingerprint(model_a) != model_fingerprint(model_b)
    image = rng.integers(0, 256, (40, 70, 3), dtype=np.uint8)
    cache = EmbeddingCache(tmp_path)
    set_image_cached(segany.SamPredictor(model_a), image, cache)
    assert set_image_cached(segany.SamPredictor(model_b), image, cache) is False
    changed = image.copy()
    changed[0, 0, 0] ^= 1
    assert set_image_cached(segany.SamPredictor(model_a), changed, cache) is False


def test_damaged_entry_is_recomputed(tmp_path, rng):
    torch.manual_seed(0)
    model = segany.build_sam("tiny")
    image = rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)
    cache = EmbeddingCache(tmp_path)
    set_image_cached(segany.SamPredictor(model), image, cache)
    (entry,) = tmp_path.rglob("*.safetensors")
    entry.write_bytes(b"garbage")
    predictor = segany.SamPredictor(model)
    assert set_image_cached(predictor, image, cache) is False
    assert predictor.is_image_set


def test_set_image_embedding_rejects_wrong_shape():
    predictor = segany.SamPredictor(segany.build_sam("tiny"))
    import pytest

    with pytest.raises(ValueError, match="image embedding must have shape"):
        predictor.set_image_embedding(torch.zeros(1, 256, 8, 8), (10, 10), (256, 256))


def test_fingerprint_covers_batchnorm_statistics_of_the_lite_encoder():
    """The lite encoder has 0-d buffers (num_batches_tracked) and running statistics that shape its output."""
    torch.manual_seed(0)
    model = segany.build_sam("lite")
    before = model_fingerprint(model)
    assert model_fingerprint(model) == before
    with torch.no_grad():
        model.image_encoder._bn0.running_mean += 0.5
    assert model_fingerprint(model) != before
