"""The FLOP counter behind the arithmetic table of benches/bench_predictor.py, and segany's arithmetic against the official one."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

import segany
from oracle import PARITY_CONFIG, PROMPTS, blocky_image, build_model_pair
from segany.build import SamConfig
from segany.speed.flops import FlopCounter

from segment_anything import SamPredictor as OfficialPredictor  # noqa: E402


@pytest.mark.parametrize("mode", [torch.inference_mode, torch.no_grad])
def test_a_linear_layer_counts_two_flops_per_multiply_add(mode):
    layer = torch.nn.Linear(48, 80)
    with mode(), FlopCounter() as counter:
        layer(torch.randn(3, 5, 48))
    assert counter.total == 2 * 3 * 5 * 48 * 80


def test_cpu_attention_counts_both_products():
    query, key, value = torch.randn(2, 3, 10, 8), torch.randn(2, 3, 14, 8), torch.randn(2, 3, 14, 6)
    with torch.inference_mode(), FlopCounter() as counter:
        F.scaled_dot_product_attention(query, key, value, attn_mask=torch.randn(2, 3, 10, 14))
    assert counter.total == 2 * 2 * 3 * 10 * 14 * (8 + 6)


def test_a_composite_product_is_counted_once():
    left, right = torch.randn(4, 6, 7), torch.randn(7, 9)
    with torch.inference_mode(), FlopCounter() as counter:
        torch.einsum("bik,kj->bij", left, right)
    assert counter.total == 2 * 4 * 6 * 7 * 9


def test_an_in_place_product_counts_as_its_out_of_place_twin():
    total, left, right = torch.randn(2, 5, 9), torch.randn(2, 5, 4), torch.randn(2, 4, 9)
    with torch.inference_mode(), FlopCounter() as counter:
        total.baddbmm_(left, right)
        torch.baddbmm(total, left, right)
        total.add_(1.0)  # element-wise: not counted
    assert counter.by_op == {"aten.baddbmm_": 2 * 2 * 5 * 4 * 9, "aten.baddbmm": 2 * 2 * 5 * 4 * 9}


def count(function) -> int:
    with FlopCounter() as counter:
        function()
    return counter.total


def test_segany_encodes_with_less_arithmetic():
    """Windowed blocks project only the real tokens, not the windows' padding (PARITY_CONFIG's
    20-token grid pads to 21); everything else is the same network. (``set_image`` does more:
    segany also projects the image once for the decoder's first block, which the official
    decoder does again for every prompt.)"""
    reference, ours = build_model_pair(seed=0, config=PARITY_CONFIG)
    pixels = torch.randn(1, 3, PARITY_CONFIG.image_size, PARITY_CONFIG.image_size)
    with torch.inference_mode():
        official_flops = count(lambda: reference.image_encoder(pixels))
        our_flops = count(lambda: ours.image_encoder(pixels))
    assert our_flops < official_flops
    assert our_flops > 0.8 * official_flops


# The decoder at SAM's real 64 x 64 token grid (its cost depends on the grid, not on the encoder).
FULL_GRID = SamConfig(encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=(1,))


@pytest.mark.parametrize("prompt", ["one point", "points and box"])
def test_segany_decodes_a_prompt_with_under_half_the_arithmetic(prompt):
    """The decoder's projections over the 4096 image tokens are folded onto the few prompt
    tokens, the first block's image side is computed once per image, and only the returned
    masks are decoded: vit_b's decoder does 1.61 GFLOP a prompt against the official 3.62."""
    reference_model, our_model = build_model_pair(seed=0, config=FULL_GRID)
    reference, ours = OfficialPredictor(reference_model), segany.SamPredictor(our_model)
    image = blocky_image()
    reference.set_image(image)
    ours.set_image(image)
    official_flops = count(lambda: reference.predict(**PROMPTS[prompt], multimask_output=True))
    our_flops = count(lambda: ours.predict(**PROMPTS[prompt], multimask_output=True))
    assert our_flops < 0.5 * official_flops
