"""Parity with the official package on a GPU: both models on CUDA, same seeded random weights.

The CPU-only paths (oneDNN products, parallel streams, the numba mask resizing) are skipped
there, so the GPU runs segany's other code: SDPA attention, whole-batch upscaling and
PyTorch's interpolation. TF32 is turned off on both sides so that float32 means float32.
Skipped without a GPU (CI has none); run on one with ``pytest tests/test_parity_cuda.py``.
"""

from __future__ import annotations

import pytest
import torch

import segany
from oracle import PROMPTS, assert_same_records, blocky_image, build_model_pair
from test_parity import (
    assert_batched_boxes_match,
    assert_follow_up_with_mask_input_matches,
    assert_outputs_match,
    reference_logits,
)

from segment_anything import SamAutomaticMaskGenerator as OfficialGenerator  # noqa: E402
from segment_anything import SamPredictor as OfficialPredictor  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def strict_float32():
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


@pytest.fixture(scope="module")
def models(strict_float32):
    reference, ours = build_model_pair(seed=0)
    return reference.to("cuda"), ours.to("cuda")


@pytest.fixture(scope="module")
def predictors(models):
    reference_model, our_model = models
    reference, ours = OfficialPredictor(reference_model), segany.SamPredictor(our_model)
    image = blocky_image()
    reference.set_image(image)
    ours.set_image(image)
    return reference, ours


def test_image_embedding_matches_on_gpu(predictors):
    reference, ours = predictors
    expected, actual = reference.get_image_embedding(), ours.get_image_embedding()
    assert actual.device.type == "cuda"
    assert (actual - expected).abs().max().item() <= 1e-4


@pytest.mark.parametrize("prompt", list(PROMPTS))
@pytest.mark.parametrize("multimask_output", [True, False])
@pytest.mark.parametrize("return_logits", [False, True])
def test_predict_matches_on_gpu(predictors, prompt, multimask_output, return_logits):
    reference, ours = predictors
    kwargs = dict(PROMPTS[prompt], multimask_output=multimask_output, return_logits=return_logits)
    assert_outputs_match(reference.predict(**kwargs), ours.predict(**kwargs), return_logits,
                         reference_logits(reference, kwargs))


def test_mask_input_from_previous_call_matches_on_gpu(predictors):
    assert_follow_up_with_mask_input_matches(*predictors)


def test_batched_boxes_through_predict_torch_on_gpu(predictors):
    assert_batched_boxes_match(*predictors, device="cuda", max_flipped_pixels=2)


def test_automatic_generator_matches_on_gpu(models):
    from segany.automask import SamAutomaticMaskGenerator

    reference_model, our_model = models
    # Random weights give masks over most of the image: no thresholds and no NMS keep them all.
    settings = dict(points_per_side=6, crop_n_layers=1, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                    box_nms_thresh=1.0, crop_nms_thresh=1.0)
    image = blocky_image()
    expected = OfficialGenerator(reference_model, **settings).generate(image)
    actual = SamAutomaticMaskGenerator(our_model, **settings).generate(image)
    assert expected, "degenerate test: the official generator kept no mask"
    assert_same_records(expected, actual, max_flipped_pixels=20)
