"""Fast modes: what each changes, that the predictor still works on the changed model, and
that batched encoding gives the per-image embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import segany
from oracle import build_model_pair, official  # noqa: F401
from segany.build import CONFIGS
from segany.speed import accelerate, embed_images
from segany.speed.modes import parse_mode

POINT = dict(point_coords=np.array([[120.0, 80.0]]), point_labels=np.array([1]))


def fresh_model() -> segany.Sam:
    return build_model_pair(seed=0, config=CONFIGS["tiny"])[1]


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, size=(9, 14, 3)).astype(np.uint8)
    photo = np.kron(base, np.ones((21, 21, 1), dtype=np.uint8))[:187, :291]
    return [photo, np.ascontiguousarray(photo[:150, :120]), np.ascontiguousarray(photo[::-1])]


@pytest.fixture(scope="module")
def exact(images):
    """The exact path's embedding and logits for each image."""
    predictor = segany.SamPredictor(fresh_model())
    results = []
    for image in images:
        predictor.set_image(image)
        results.append((predictor.features.clone(), predictor.predict(**POINT, return_logits=True)))
    return results


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).norm() / expected.norm()).item()


@pytest.mark.parametrize(
    "mode, device, message",
    [
        ("fast", "cpu", "unknown speed mode"),
        ("", "cpu", "unknown speed mode"),
        ("fp16", "cpu", "needs a GPU"),
        ("int8", "cuda", "CPU only"),
        ("bf16+int8", "cpu", "at most one"),
        ("exact+compile", "cpu", "cannot be combined"),
    ],
)
def test_parse_mode_rejects_bad_modes(mode, device, message):
    with pytest.raises(ValueError, match=message):
        parse_mode(mode, device)


def test_parse_mode_accepts_combinations():
    assert parse_mode("bf16+compile", "cpu") == ["bf16", "compile"]
    assert parse_mode("fp16", "cuda") == ["fp16"]


def test_exact_mode_changes_nothing(images, exact):
    predictor = segany.SamPredictor(accelerate(fresh_model(), "exact"))
    predictor.set_image(images[0])
    assert torch.equal(predictor.features, exact[0][0])


@pytest.mark.parametrize("mode, tolerance", [("bf16", 0.05), ("int8", 0.1)])
def test_reduced_precision_modes_stay_close_and_keep_the_decoder_exact(images, exact, mode, tolerance):
    model = accelerate(fresh_model(), mode)
    assert model.speed_mode == mode
    assert all(p.dtype == torch.float32 for p in model.mask_decoder.parameters())
    assert all(p.dtype == torch.float32 for p in model.prompt_encoder.parameters())
    if mode == "int8":
        assert not any(type(m) is nn.Linear for m in model.image_encoder.modules())
        assert any("quantized" in type(m).__module__ for m in model.image_encoder.modules())
    else:
        assert all(p.dtype == torch.bfloat16 for p in model.image_encoder.parameters())
    predictor = segany.SamPredictor(model)
    for image, (features, (logits, _, _)) in zip(images, exact):
        predictor.set_image(image)
        assert predictor.features.dtype == torch.float32
        assert 0 < relative_error(predictor.features, features) <= tolerance
        masks, scores, _ = predictor.predict(**POINT)
        assert masks.shape == logits.shape and np.isfinite(scores).all()


@pytest.mark.parametrize("mode", ["exact", "bf16"])
def test_batched_encoding_matches_per_image_encoding(images, exact, mode):
    model = accelerate(fresh_model(), mode)
    predictor = segany.SamPredictor(model)
    embedded = list(embed_images(model, images, batch_size=2))
    assert len(embedded) == len(images)
    for image, (features, original_size, input_size), (exact_features, exact_outputs) in zip(images, embedded, exact):
        assert original_size == image.shape[:2] and features.dtype == torch.float32
        if mode == "exact":
            assert (features - exact_features).abs().max().item() <= 1e-4
            predictor.set_image_embedding(features, original_size, input_size)
            for got, want in zip(predictor.predict(**POINT, return_logits=True), exact_outputs):
                assert np.abs(got - want).max() <= 1e-4
        else:
            predictor.set_image(image)
            assert relative_error(features, predictor.features) <= 0.02


def test_embed_images_rejects_bad_batch_size(images):
    with pytest.raises(ValueError, match="batch_size"):
        list(embed_images(fresh_model(), images, batch_size=0))


@pytest.mark.slow
def test_compile_mode_matches_exact(images, exact):
    predictor = segany.SamPredictor(accelerate(fresh_model(), "compile"))
    predictor.set_image(images[0])
    assert (predictor.features - exact[0][0]).abs().max().item() <= 1e-4
