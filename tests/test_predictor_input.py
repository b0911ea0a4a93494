"""The predictor rejects bad input with a clear message."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import segany


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    predictor = segany.SamPredictor(segany.build_sam("tiny"))
    predictor.set_image(np.zeros((40, 60, 3), dtype=np.uint8))
    return predictor


def test_predict_before_set_image_raises():
    fresh = segany.SamPredictor(segany.build_sam("tiny"))
    with pytest.raises(ValueError, match="set_image"):
        fresh.predict(np.array([[1.0, 1.0]]), np.array([1]))
    with pytest.raises(RuntimeError):  # the official package raises RuntimeError: both work
        fresh.get_image_embedding()


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((10, 10), dtype=np.uint8), "HxWx3"),
        (np.zeros((10, 10, 4), dtype=np.uint8), "HxWx3"),
        (np.zeros((10, 10, 3), dtype=np.float32), "uint8"),
        (np.zeros((0, 10, 3), dtype=np.uint8), "empty"),
        ([[1, 2, 3]], "numpy array"),
    ],
)
def test_set_image_rejects(image, message):
    fresh = segany.SamPredictor(segany.build_sam("tiny"))
    with pytest.raises(ValueError, match=message):
        fresh.set_image(image)


def test_set_image_rejects_unknown_format(predictor):
    with pytest.raises(ValueError, match="image_format"):
        predictor.set_image(np.zeros((4, 4, 3), dtype=np.uint8), image_format="HSV")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(point_coords=np.array([[70.0, 10.0]]), point_labels=np.array([1])), "outside the 60x40"),
        (dict(point_coords=np.array([[-1.0, 10.0]]), point_labels=np.array([1])), "outside"),
        (dict(point_coords=np.array([[np.nan, 10.0]]), point_labels=np.array([1])), "NaN"),
        (dict(point_coords=np.array([[1.0, 1.0], [2.0, 2.0]]), point_labels=np.array([1])), "to match"),
        (dict(point_coords=np.array([[1.0, 1.0]]), point_labels=None), "together"),
        (dict(point_coords=np.array([1.0, 1.0]), point_labels=np.array([1])), "Nx2"),
        (dict(point_coords=np.zeros((0, 2)), point_labels=np.zeros(0)), "empty"),
        (dict(point_coords=np.array([[1.0, 1.0]]), point_labels=np.array([2])), "label"),
        (dict(box=np.array([30.0, 10.0, 20.0, 30.0])), "x1 >= x0"),
        (dict(box=np.array([0.0, 0.0, 80.0, 30.0])), "outside"),
        (dict(box=np.array([1.0, 2.0, 3.0])), "4 values"),
        (dict(mask_input=np.zeros((1, 10, 10))), "mask_input must have shape"),
        (dict(), "no prompt"),
    ],
)
def test_predict_rejects(predictor, kwargs, message):
    with pytest.raises(ValueError, match=message):
        predictor.predict(**kwargs)


def test_predict_torch_rejects_mismatched_batches(predictor):
    with pytest.raises(ValueError, match="BxNx2"):
        predictor.predict_torch(torch.zeros(2, 3, 2), torch.zeros(2, 2))


def test_bgr_input_equals_rgb(predictor):
    image = np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    predictor.set_image(image)
    rgb = predictor.get_image_embedding().clone()
    predictor.set_image(np.ascontiguousarray(image[..., ::-1]), image_format="BGR")
    assert torch.equal(rgb, predictor.get_image_embedding())
