"""The official ``segment_anything`` package as a test oracle.

Builds the official model and segany's from one configuration, with identical seeded random
weights, so that any difference in outputs is a difference in the implementations; and compares
the two automatic generators' records.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch

import segany
from segany.build import SamConfig, build_model

official = pytest.importorskip("segment_anything", reason="the official package is the parity oracle")
from segment_anything.modeling import (  # noqa: E402
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

# Reduced configuration for parity: non-square windows padding (20 tokens, window 7),
# two global blocks, SAM's real prompt encoder and mask decoder.
PARITY_CONFIG = SamConfig(
    encoder_embed_dim=96,
    encoder_depth=4,
    encoder_num_heads=3,
    encoder_global_attn_indexes=(1, 3),
    image_size=320,
    window_size=7,
)


def build_official(config: SamConfig) -> Sam:
    """The official Sam for ``config``, built with the official classes."""
    grid = config.embedding_size
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=config.encoder_depth,
            embed_dim=config.encoder_embed_dim,
            img_size=config.image_size,
            mlp_ratio=config.mlp_ratio,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=config.encoder_num_heads,
            patch_size=config.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=config.encoder_global_attn_indexes,
            window_size=config.window_size,
            out_chans=config.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=config.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(config.image_size, config.image_size),
            mask_in_chans=config.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=config.decoder_depth,
                embedding_dim=config.prompt_embed_dim,
                mlp_dim=config.decoder_mlp_dim,
                num_heads=config.decoder_num_heads,
            ),
            transformer_dim=config.prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=config.iou_head_hidden_dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    ).eval()


def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Give every parameter seeded random values, including those initialised to zero or one.

    Scales follow each tensor's fan-in so activations stay in a useful range.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in sorted(model.state_dict().items()):
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if tensor.ndim >= 2 and "gaussian_matrix" not in name:
                fan_in = tensor[0].numel()
                tensor.copy_(noise / fan_in**0.5)
            elif name.endswith("weight") and tensor.ndim == 1:  # norm scales
                tensor.copy_(1.0 + 0.1 * noise)
            else:
                tensor.copy_(noise * (1.0 if "gaussian_matrix" in name else 0.1))


def build_model_pair(seed: int = 0, config: SamConfig = PARITY_CONFIG) -> tuple[Sam, segany.Sam]:
    """(official, segany) models of ``config`` holding the same seeded random weights."""
    reference = build_official(config)
    randomize_(reference, seed)
    ours = build_model(config)
    ours.load_state_dict(reference.state_dict())
    return reference, ours


def blocky_image() -> np.ndarray:
    """A smooth non-square image (random blocks upsampled), so that masks of random weights have structure."""
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, size=(9, 14, 3)).astype(np.uint8)
    return np.kron(base, np.ones((21, 21, 1), dtype=np.uint8))[:187, :291]


# Prompts inside blocky_image(): every prompt kind the predictor takes.
PROMPTS = {
    "one point": dict(point_coords=np.array([[120.0, 80.0]]), point_labels=np.array([1])),
    "points with negatives": dict(
        point_coords=np.array([[120.0, 80.0], [30.0, 150.0], [250.0, 20.0]]), point_labels=np.array([1, 0, 0])
    ),
    "box": dict(box=np.array([40.0, 30.0, 200.0, 160.0])),
    "points and box": dict(
        point_coords=np.array([[120.0, 80.0], [60.0, 50.0]]), point_labels=np.array([1, 0]),
        box=np.array([40.0, 30.0, 200.0, 160.0]),
    ),
}


def assert_same_records(expected: list[dict], actual: list[dict], max_flipped_pixels: int = 0) -> None:
    """Same masks in the same order; scores to float tolerance.

    ``max_flipped_pixels`` > 0 allows that many pixels in all to differ, for models whose
    logits differ by float rounding (a pixel whose logit is ~1e-6 from the cutoff may flip).
    """
    assert len(actual) == len(expected)
    flipped = 0
    for index, (want, got) in enumerate(zip(expected, actual)):
        assert list(got) == list(want), f"record {index}: keys differ"
        assert got["point_coords"] == want["point_coords"], f"record {index}: prompt differs"
        assert got["crop_box"] == want["crop_box"], f"record {index}"
        assert got["predicted_iou"] == pytest.approx(want["predicted_iou"], abs=1e-5), f"record {index}"
        stability = pytest.approx(want["stability_score"], abs=1e-4, nan_ok=True)
        assert got["stability_score"] == stability, f"record {index}"
        if isinstance(want["segmentation"], np.ndarray):
            assert got["segmentation"].shape == want["segmentation"].shape and got["segmentation"].dtype == bool
            difference = int((got["segmentation"] != want["segmentation"]).sum())
        else:
            difference = 0 if got["segmentation"] == want["segmentation"] else max_flipped_pixels + 1
        flipped += difference
        if difference == 0:
            assert got["bbox"] == want["bbox"] and got["area"] == want["area"], f"record {index}"
        else:
            assert abs(got["area"] - want["area"]) <= difference, f"record {index}"
    assert flipped <= max_flipped_pixels, f"{flipped} mask pixels differ"
