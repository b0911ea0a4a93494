"""The two-way transformer reading its image updates through the image's maps
(segany.modeling.update_maps) gives what it gives reading the updated image tokens."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from oracle import PARITY_CONFIG, blocky_image, randomize_
from segany import SamPredictor
from segany.build import build_model

POINTS = np.array([[120.0, 80.0], [30.0, 150.0], [250.0, 20.0]])


@pytest.fixture(scope="module")
def predictor() -> SamPredictor:
    """Every weight random, norms included: gains and offsets the maps must carry."""
    model = build_model(PARITY_CONFIG).eval()
    randomize_(model, seed=6)
    predictor = SamPredictor(model)
    predictor.set_image(blocky_image())
    return predictor


def run(predictor: SamPredictor, image_side, streams: int, factored: bool):
    model = predictor.model
    coords = torch.as_tensor(predictor.transform.apply_coords(POINTS, predictor.original_size), dtype=torch.float32)
    labels = torch.tensor([[1, 0, 1]], dtype=torch.int).expand(len(POINTS), -1)
    with torch.no_grad():
        sparse, _ = model.prompt_encoder(points=(coords[None].expand(len(POINTS), -1, -1), labels), boxes=None, masks=None)
        decoder = model.mask_decoder
        tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight]).expand(len(POINTS), -1, -1)
        return decoder.transformer.run(
            image_side, torch.cat([tokens, sparse], dim=1), outputs=[0, 2, 3], streams=streams, factored=factored
        )


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape
    assert (actual - expected).abs().max().item() <= 2e-6 * expected.abs().max().item()


@pytest.mark.parametrize("streams", [1, 3])
def test_reading_the_updates_through_the_maps_gives_the_direct_values(predictor, streams):
    side = predictor._image_side
    assert side.update_maps is not None
    expected = run(predictor, dataclasses.replace(side, update_maps=None), streams, factored=True)
    actual = run(predictor, side, streams, factored=True)
    assert_close(actual.tokens, expected.tokens)
    assert actual.image_tokens is None and expected.image_tokens is not None
    (expected_parts, expected_values), (actual_parts, actual_values) = expected.factors, actual.factors
    for want, got in zip(expected_parts, actual_parts, strict=True):
        assert got.tokens == want.tokens
        for got_tensor, want_tensor in zip(got.weights + got.rstd, want.weights + want.rstd, strict=True):
            assert_close(got_tensor, want_tensor)
    for got, want in zip(actual_values, expected_values, strict=True):
        assert_close(got, want)


def test_the_plain_run_ignores_the_maps(predictor):
    side = predictor._image_side
    plain = run(predictor, side, 1, factored=False)
    assert plain.factors is None
    assert_close(plain.image_tokens, run(predictor, dataclasses.replace(side, update_maps=None), 1, False).image_tokens)


@pytest.mark.parametrize("decoder_depth", [1, 3])
def test_only_two_block_transformers_keep_the_maps(decoder_depth):
    model = build_model(dataclasses.replace(PARITY_CONFIG, decoder_depth=decoder_depth)).eval()
    predictor = SamPredictor(model)
    predictor.set_image(blocky_image())
    assert predictor._image_side.update_maps is None
    assert predictor._image_side.upscaling is not None


def test_a_prompt_with_its_own_image_side_makes_no_maps(predictor, monkeypatch):
    """A mask input gives the prompt an image side of its own, used once: making the maps (a
    few times the work of the first block's projections) would only slow it down."""
    from segany.modeling import factored_image, update_maps

    def refuse(*args, **kwargs):
        raise AssertionError("maps made for a single prompt")

    monkeypatch.setattr(update_maps.UpdateMaps, "of", refuse)
    monkeypatch.setattr(factored_image.FactoredMap, "of", refuse)
    first = predictor.predict(point_coords=POINTS[:1], point_labels=np.array([1]), multimask_output=False)
    masks, _, low_res = predictor.predict(point_coords=POINTS[:1], point_labels=np.array([1]), mask_input=first[2])
    assert masks.shape[0] == 3 and low_res.shape == (3, *first[2].shape[1:])


def test_half_precision_keeps_the_direct_path(predictor):
    """Its rounding, magnified by the maps' Gram products, would cost more than it saves."""
    decoder = copy.deepcopy(predictor.model.mask_decoder)
    embedding, pe = predictor.features, predictor._image_pe
    with torch.no_grad():
        assert decoder.image_side(embedding, pe, torch.zeros_like(embedding)).update_maps is not None
        decoder.bfloat16()
        half = decoder.image_side(embedding.bfloat16(), pe.bfloat16(), torch.zeros_like(embedding).bfloat16())
    assert half.update_maps is None and half.upscaling is None
