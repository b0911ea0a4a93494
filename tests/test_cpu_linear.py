"""Linear layers through oneDNN on the CPU: same values as F.linear, and only where they may."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from segany.modeling import cpu_linear
from segany.speed.flops import FlopCounter

ONEDNN_OP = "mkldnn._linear_pointwise"
needs_onednn = pytest.mark.skipif(not cpu_linear.ONEDNN, reason="this PyTorch build has no oneDNN")


def layer_and_input(rows: int = 512, width: int = 96, out: int = 192) -> tuple[nn.Linear, torch.Tensor]:
    torch.manual_seed(0)
    return nn.Linear(width, out), torch.randn(2, rows, width)


def ops_run(function) -> set[str]:
    with FlopCounter() as counted:
        function()
    return set(counted.by_op)


@needs_onednn
@pytest.mark.parametrize(
    "activation", [None, nn.GELU(), nn.GELU(approximate="tanh"), nn.ReLU(), nn.SiLU()], ids=repr
)
def test_onednn_gives_the_values_of_f_linear_and_its_activation(activation):
    layer, x = layer_and_input()
    expected = F.linear(x, layer.weight, layer.bias)
    expected = expected if activation is None else activation(expected)
    with torch.inference_mode():
        actual = cpu_linear.linear(x, layer, activation)
        assert ONEDNN_OP in ops_run(lambda: cpu_linear.linear(x, layer, activation))
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_weight_and_bias_given_as_tensors_and_strided_inputs():
    layer, x = layer_and_input()
    strided = x.transpose(0, 1)
    with torch.inference_mode():
        actual = cpu_linear.linear(strided, (layer.weight, None))
    torch.testing.assert_close(actual, F.linear(strided, layer.weight), rtol=1e-5, atol=1e-5)


@needs_onednn
def test_autograd_keeps_f_linear_and_its_gradients():
    layer, x = layer_and_input()
    x.requires_grad_(True)
    assert ONEDNN_OP not in ops_run(lambda: cpu_linear.linear(x, layer, nn.GELU()))
    cpu_linear.linear(x, layer, nn.GELU()).sum().backward()
    assert x.grad is not None and layer.weight.grad is not None and x.grad.abs().sum() > 0


@needs_onednn
def test_small_products_and_other_dtypes_keep_f_linear():
    layer, x = layer_and_input(rows=7, width=32, out=32)
    with torch.inference_mode():
        assert ONEDNN_OP not in ops_run(lambda: cpu_linear.linear(x, layer))
        double = nn.Linear(96, 192).double()
        big = torch.randn(4, 512, 96, dtype=torch.float64)
        assert ONEDNN_OP not in ops_run(lambda: cpu_linear.linear(big, double))
        torch.testing.assert_close(cpu_linear.linear(big, double), double(big))


@needs_onednn
def test_the_predictor_takes_the_onednn_path_for_the_image_and_the_prompt():
    from segany import SamPredictor
    from segany.build import SamConfig, build_model

    config = SamConfig(
        encoder_embed_dim=96, encoder_depth=2, encoder_num_heads=3, encoder_global_attn_indexes=(1,),
        image_size=320, window_size=7,
    )
    predictor = SamPredictor(build_model(config).eval())
    image = np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    assert ONEDNN_OP in ops_run(lambda: predictor.set_image(image))
    assert ONEDNN_OP in ops_run(lambda: predictor.predict(np.array([[100.0, 50.0]]), np.array([1])))


@needs_onednn
@pytest.mark.parametrize("band_bytes", [2**30, 1], ids=["whole", "one row a band"])
def test_global_attention_as_onednn_products_matches_sdpa_for_a_batch(monkeypatch, band_bytes):
    from segany.modeling import image_encoder

    torch.manual_seed(0)
    attention = image_encoder.RelPosAttention(dim=64, num_heads=2, grid_size=12).eval()
    nn.init.normal_(attention.rel_pos_h, std=0.5)
    nn.init.normal_(attention.rel_pos_w, std=0.5)
    qkv = torch.randn(2, 12, 12, 3 * 64)
    monkeypatch.setattr(image_encoder, "MASK_CHUNK_BYTES", band_bytes)
    with torch.inference_mode():
        monkeypatch.setattr(image_encoder, "ONEDNN_ATTENTION_MIN_MULTIPLY_ADDS", 2**62)
        expected = attention.attend(qkv)
        monkeypatch.setattr(image_encoder, "ONEDNN_ATTENTION_MIN_MULTIPLY_ADDS", 0)
        counted = ops_run(lambda: attention.attend(qkv))
        actual = attention.attend(qkv)
        alone = attention.attend(qkv[1:])
    assert "aten._scaled_dot_product_flash_attention_for_cpu" not in counted
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(alone[0], actual[1], rtol=1e-6, atol=1e-6)


def test_global_attention_of_a_bfloat16_encoder_keeps_sdpa(monkeypatch):
    """Only float32 takes the oneDNN products: a bf16 speed mode keeps SDPA's softmax."""
    from segany.modeling import image_encoder

    torch.manual_seed(0)
    attention = image_encoder.RelPosAttention(dim=64, num_heads=2, grid_size=12).eval().to(torch.bfloat16)
    qkv = torch.randn(1, 12, 12, 3 * 64, dtype=torch.bfloat16)
    monkeypatch.setattr(image_encoder, "ONEDNN_ATTENTION_MIN_MULTIPLY_ADDS", 0)
    with torch.inference_mode():
        counted = ops_run(lambda: attention.attend(qkv))
    assert "aten._scaled_dot_product_flash_attention_for_cpu" in counted


@needs_onednn
def test_prepacked_weights_give_the_same_values_and_follow_the_weights():
    """A packed copy is reused while its weight is unchanged and redone after any change: an
    in-place update (optimizer step, load_state_dict) or a new tensor put in its place."""
    layer, x = layer_and_input(rows=64, width=256, out=512)
    packed_ops = {}

    def both() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            packed = cpu_linear.linear(x, layer, nn.ReLU(), prepacked=True)
            packed_ops["copy"] = cpu_linear._packed_weights[id(layer.weight)][2]
            return packed, cpu_linear.linear(x, layer, nn.ReLU())

    packed, plain = both()
    assert torch.equal(packed, plain)
    first_copy = packed_ops["copy"]
    both()
    assert packed_ops["copy"] is first_copy, "an unchanged weight is packed once"
    with torch.no_grad():
        layer.weight.mul_(-1.5)
    packed, plain = both()
    assert torch.equal(packed, plain) and packed_ops["copy"] is not first_copy
    layer.load_state_dict({"weight": torch.randn(512, 256), "bias": layer.bias.detach()})
    packed, plain = both()
    assert torch.equal(packed, plain)
    layer.weight = nn.Parameter(torch.randn(512, 256))
    packed, plain = both()
    assert torch.equal(packed, plain)
    key = id(layer.weight)
    del layer, packed_ops["copy"]
    assert key not in cpu_linear._packed_weights, "the packed copy goes with its weight"


@needs_onednn
def test_prepacked_inference_weights_are_packed_but_not_kept():
    with torch.inference_mode():
        layer, x = layer_and_input(rows=64, width=256, out=512)
        packed = cpu_linear.linear(x, layer, prepacked=True)
        assert torch.equal(packed, cpu_linear.linear(x, layer))
    assert id(layer.weight) not in cpu_linear._packed_weights


def test_the_predictor_follows_prompt_weights_updated_in_place():
    """What a predictor keeps between prompts (the image side of the decoder's first block, the
    packed MLP weights, the upscaling matrices) must follow the prompt encoder's and decoder's
    weights when they change in place after set_image, as the official predictor's answers do."""
    from segany import SamPredictor
    from segany.build import SamConfig, build_model

    config = SamConfig(
        encoder_embed_dim=96, encoder_depth=2, encoder_num_heads=3, encoder_global_attn_indexes=(1,),
        image_size=320, window_size=7,
    )
    torch.manual_seed(0)
    model = build_model(config).eval()
    torch.manual_seed(1)
    other = build_model(config).eval()
    image = np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    point = dict(point_coords=np.array([[100.0, 50.0]]), point_labels=np.array([1]), return_logits=True)
    predictor = SamPredictor(model)
    predictor.set_image(image)
    before = predictor.predict(**point)
    model.mask_decoder.load_state_dict(other.mask_decoder.state_dict())
    model.prompt_encoder.load_state_dict(other.prompt_encoder.state_dict())
    after = predictor.predict(**point)
    rebuilt = build_model(config).eval()  # the same weights, nothing kept from earlier prompts
    rebuilt.load_state_dict(model.state_dict())
    fresh = SamPredictor(rebuilt)
    fresh.set_image(image)
    expected = fresh.predict(**point)
    assert not np.allclose(before[0], expected[0], atol=1e-3), "degenerate test: the weights must matter"
    for got, want in zip(after, expected):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    "name",
    [
        "mask_decoder.transformer.layers.0.norm4.bias",
        "mask_decoder.transformer.layers.1.norm4.weight",
        "mask_decoder.transformer.layers.0.cross_attn_image_to_token.out_proj.weight",
        "mask_decoder.transformer.layers.1.cross_attn_image_to_token.out_proj.bias",
        "mask_decoder.output_upscaling.0.weight",
        "mask_decoder.output_upscaling.0.bias",
        "mask_decoder.transformer.layers.1.cross_attn_token_to_image.k_proj.weight",
        "mask_decoder.transformer.layers.1.cross_attn_token_to_image.v_proj.bias",
        "mask_decoder.transformer.layers.1.cross_attn_image_to_token.q_proj.weight",
        "mask_decoder.transformer.layers.1.cross_attn_image_to_token.q_proj.bias",
        "mask_decoder.transformer.layers.1.norm4.bias",
        "mask_decoder.transformer.final_attn_token_to_image.k_proj.weight",
        "mask_decoder.transformer.final_attn_token_to_image.v_proj.bias",
    ],
)
def test_the_predictor_follows_each_weight_its_image_maps_read(name):
    """The image side keeps maps made from these weights (the upscaling's first product,
    segany.modeling.factored_image, and the reads of the image updates,
    segany.modeling.update_maps): changing any one in place must change the answers as it
    does for a predictor made after the change."""
    from oracle import PARITY_CONFIG, blocky_image, randomize_
    from segany import SamPredictor
    from segany.build import build_model

    model = build_model(PARITY_CONFIG).eval()
    randomize_(model, seed=4)
    point = dict(point_coords=np.array([[120.0, 80.0]]), point_labels=np.array([1]), return_logits=True)
    predictor = SamPredictor(model)
    predictor.set_image(blocky_image())
    before = predictor.predict(**point)
    with torch.no_grad():
        tensor = model.get_parameter(name)
        tensor.add_(0.5 * torch.randn(tensor.shape, generator=torch.Generator().manual_seed(5)))
    after = predictor.predict(**point)
    fresh = SamPredictor(model)
    fresh.set_image(blocky_image())
    expected = fresh.predict(**point)
    assert not np.allclose(before[0], expected[0], atol=1e-3), "degenerate test: the weight must matter"
    for got, want in zip(after, expected):
        np.testing.assert_array_equal(got, want)
