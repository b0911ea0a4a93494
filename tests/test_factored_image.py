"""The upscaling's first product made from the image's base and each prompt's attention weights
(segany.modeling.factored_image) equals the product of the image tokens the transformer makes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from oracle import PARITY_CONFIG, blocky_image, randomize_
from segany import SamPredictor
from segany.build import build_model
from segany.modeling.mask_decoder import DecodedPrompts

POINTS = np.array([[120.0, 80.0], [30.0, 150.0], [250.0, 20.0], [200.0, 170.0]])


def predictor_of(decoder_depth: int) -> SamPredictor:
    """A predictor on blocky_image() of a model whose every weight is random, norms included
    (gains and offsets that are not 1 and 0 are what the factors must carry)."""
    model = build_model(dataclasses.replace(PARITY_CONFIG, decoder_depth=decoder_depth)).eval()
    randomize_(model, seed=3)
    predictor = SamPredictor(model)
    predictor.set_image(blocky_image())
    return predictor


@pytest.fixture(scope="module")
def predictor() -> SamPredictor:
    return predictor_of(2)


def decode(predictor: SamPredictor, streams: int = 1, update_maps: bool = True) -> DecodedPrompts:
    """The predictor's prompts of POINTS, one a prompt, decoded as one batch; without
    ``update_maps`` the transformer applies its updates to the image tokens and returns them."""
    model = predictor.model
    coords = torch.as_tensor(predictor.transform.apply_coords(POINTS, predictor.original_size), dtype=torch.float32)
    labels = torch.ones(len(POINTS), 1, dtype=torch.int)
    with torch.no_grad():
        sparse, dense = model.prompt_encoder(points=(coords[:, None], labels), boxes=None, masks=None)
        side = predictor._image_side if update_maps else dataclasses.replace(predictor._image_side, update_maps=None)
        return model.mask_decoder.decode(
            predictor.features, predictor._image_pe, sparse, dense, side, multimask_output=True, streams=streams
        )


def direct_product(predictor: SamPredictor, decoded: DecodedPrompts) -> torch.Tensor:
    """The upscaling's first product of the image tokens themselves (decoded without update maps)."""
    layers = predictor.model.mask_decoder._upscaling_layers()
    return F.linear(decoded.image_tokens, layers.first_weight, layers.first_bias)


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape
    assert (actual - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()


@pytest.mark.parametrize("decoder_depth", [1, 2, 3])
@pytest.mark.parametrize("streams", [1, 3])
def test_the_factored_product_is_the_product_of_the_image_tokens(decoder_depth, streams):
    predictor = predictor_of(decoder_depth)
    decoded = decode(predictor, streams)
    product, expected = decoded.first_upscaling, direct_product(predictor, decode(predictor, streams, update_maps=False))
    assert product is not None and len(product.parts) == streams
    tokens = expected.shape[1]
    for prompt in range(len(POINTS)):
        assert_close(product.of_tokens(prompt, 0, tokens), expected[prompt : prompt + 1])
    # Tokens from the middle of one range to the middle of the last.
    first, count = 5, tokens - 11
    assert_close(product.of_tokens(1, first, count), expected[1:2, first : first + count])


def test_a_window_and_a_selection_of_prompts_cut_the_product(predictor):
    decoded, plain = decode(predictor, streams=2), decode(predictor, streams=2, update_maps=False)
    rows, columns = range(3, 11), range(2, 9)
    window = decoded.window(rows, columns).first_upscaling
    expected = direct_product(predictor, plain.window(rows, columns))
    assert_close(window.of_tokens(0, 0, len(rows) * len(columns)), expected[:1])
    selected = decoded.select(torch.tensor([2, 0])).first_upscaling
    tokens = plain.image_tokens.shape[1]
    assert_close(selected.of_tokens(0, 0, tokens), direct_product(predictor, plain)[2:3])


@pytest.mark.parametrize("extent", [None, (33, 70)])
def test_masks_upscaled_from_the_factors_are_those_from_the_image_tokens(predictor, extent):
    decoder = predictor.model.mask_decoder
    decoded = decode(predictor, streams=2)
    plain = decode(predictor, streams=2, update_maps=False)
    assert plain.first_upscaling is not None and decoded.image_tokens is None
    with torch.no_grad():
        factored = decoder.upscale_masks(decoded, extent, streams=2)
        expected = decoder.upscale_masks(dataclasses.replace(plain, first_upscaling=None), extent, streams=2)
    assert_close(factored, expected)


def test_only_cpu_inference_keeps_the_base():
    predictor = predictor_of(2)
    assert predictor._image_side.upscaling is not None
    model = predictor.model
    no_mask = model.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
    with torch.enable_grad():
        side = model.mask_decoder.image_side(predictor.features, predictor._image_pe, no_mask)
    assert side.upscaling is None
