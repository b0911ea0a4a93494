"""Parity with the official segment_anything package on seeded random weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import segany
from oracle import PARITY_CONFIG, PROMPTS, blocky_image, build_model_pair, official

from segment_anything import SamPredictor as OfficialPredictor  # noqa: E402


@pytest.fixture(scope="module")
def models():
    return build_model_pair(seed=0)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return blocky_image()


@pytest.fixture(scope="module")
def predictors(models, image):
    reference_model, our_model = models
    reference, ours = OfficialPredictor(reference_model), segany.SamPredictor(our_model)
    reference.set_image(image)
    ours.set_image(image)
    return reference, ours


@pytest.fixture(params=[1, 3], ids=["serial", "3 streams"])
def streams(request, monkeypatch):
    """Prompts decoded serially, or cut between three parallel CPU streams (segany.modeling.streams)."""
    from segany.modeling import streams

    monkeypatch.setattr(streams, "MAX_STREAMS", request.param)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(threads, request.param))
    yield request.param
    torch.set_num_threads(threads)


def test_image_embedding_matches(predictors):
    reference, ours = predictors
    expected = reference.get_image_embedding()
    actual = ours.get_image_embedding()
    assert actual.shape == expected.shape
    assert (actual - expected).abs().max().item() <= 1e-4
    assert ours.original_size == reference.original_size and ours.input_size == reference.input_size


@pytest.mark.parametrize("global_attention", ["onednn", "sdpa", "sdpa, all heads a call"])
def test_image_embedding_matches_when_attention_bias_is_built_in_bands(models, image, monkeypatch, global_attention):
    """At full size the bias is built a head (all heads on GPUs) and a band of query rows at a time;
    force that here, with the global blocks' attention as oneDNN products (the CPU's) and as SDPA
    (everyone else's), one head a call (the CPU's) or all heads (the GPUs')."""
    from segany.modeling import cpu_linear, image_encoder

    monkeypatch.setattr(image_encoder, "MASK_CHUNK_BYTES", 1)
    if global_attention.startswith("sdpa"):
        monkeypatch.setattr(image_encoder, "ONEDNN_ATTENTION_MIN_MULTIPLY_ADDS", 2**62)
        if global_attention.endswith("all heads a call"):
            monkeypatch.setattr(image_encoder, "sdpa_layout", lambda device, heads: (heads, 1))
    else:
        if not cpu_linear.ONEDNN:
            pytest.skip("this PyTorch build or CPU has no oneDNN path")
        tokens = PARITY_CONFIG.embedding_size**2
        head_dim = PARITY_CONFIG.encoder_embed_dim // PARITY_CONFIG.encoder_num_heads
        assert tokens * tokens * head_dim >= image_encoder.ONEDNN_ATTENTION_MIN_MULTIPLY_ADDS, "must take oneDNN"
    reference_model, our_model = models
    reference, ours = OfficialPredictor(reference_model), segany.SamPredictor(our_model)
    reference.set_image(image)
    ours.set_image(image)
    assert (ours.get_image_embedding() - reference.get_image_embedding()).abs().max().item() <= 1e-4


@pytest.mark.parametrize("prompt", list(PROMPTS))
@pytest.mark.parametrize("multimask_output", [True, False])
@pytest.mark.parametrize("return_logits", [False, True])
def test_predict_matches(predictors, prompt, multimask_output, return_logits, streams):
    reference, ours = predictors
    kwargs = dict(PROMPTS[prompt], multimask_output=multimask_output, return_logits=return_logits)
    expected = reference.predict(**kwargs)
    actual = ours.predict(**kwargs)
    assert_outputs_match(expected, actual, return_logits, reference_logits(reference, kwargs))


@pytest.mark.parametrize("return_logits", [False, True])
def test_predict_matches_when_the_image_needs_no_resizing_back(models, image, return_logits):
    """An image whose long side is the encoder's input size skips the resize to the original."""
    reference_model, our_model = models
    side = reference_model.image_encoder.img_size
    exact = np.kron(image, np.ones((2, 2, 1), np.uint8))[: side * 5 // 8, :side]
    reference, ours = OfficialPredictor(reference_model), segany.SamPredictor(our_model)
    reference.set_image(exact)
    ours.set_image(exact)
    assert ours.original_size == ours.input_size
    kwargs = dict(PROMPTS["one point"], multimask_output=True, return_logits=return_logits)
    assert_outputs_match(reference.predict(**kwargs), ours.predict(**kwargs), return_logits, reference_logits(reference, kwargs))


def test_mask_input_from_previous_call_matches(predictors, streams):
    assert_follow_up_with_mask_input_matches(*predictors)


def test_batched_boxes_through_predict_torch(predictors, streams):
    assert_batched_boxes_match(*predictors)


def assert_follow_up_with_mask_input_matches(reference, ours) -> None:
    """A second prompt with the first prompt's best low-res mask as ``mask_input``."""
    first = dict(PROMPTS["one point"], multimask_output=True)
    _, scores, low_res = reference.predict(**first)
    mask_input = low_res[np.argmax(scores)][None]
    follow_up = dict(
        point_coords=np.array([[120.0, 80.0], [60.0, 120.0]]),
        point_labels=np.array([1, 0]),
        mask_input=mask_input,
        multimask_output=False,
    )
    assert_outputs_match(
        reference.predict(**follow_up), ours.predict(**follow_up), False, reference_logits(reference, follow_up)
    )


def assert_batched_boxes_match(reference, ours, device: str = "cpu", max_flipped_pixels: int = 0) -> None:
    """Three boxes at once through ``predict_torch`` on ``device``; masks identical but for up to
    ``max_flipped_pixels`` pixels."""
    boxes = torch.tensor([[10.0, 10.0, 100.0, 90.0], [50.0, 40.0, 280.0, 180.0], [0.0, 0.0, 291.0, 187.0]], device=device)
    transformed = reference.transform.apply_boxes_torch(boxes, reference.original_size)
    ours_transformed = ours.transform.apply_boxes_torch(boxes, ours.original_size)
    assert torch.equal(transformed, ours_transformed)
    expected = reference.predict_torch(None, None, boxes=transformed, multimask_output=True)
    actual = ours.predict_torch(None, None, boxes=transformed, multimask_output=True)
    assert all(tensor.device.type == torch.device(device).type for tensor in actual)
    assert expected[0].shape == actual[0].shape
    assert (expected[0] != actual[0]).sum().item() <= max_flipped_pixels
    assert (expected[1] - actual[1]).abs().max().item() <= 1e-5
    assert (expected[2] - actual[2]).abs().max().item() <= 1e-4


def test_upscaling_only_the_extent_gives_the_same_masks(predictors):
    """The automatic generator upscales only the tokens that reach the (non-square) image."""
    _, ours = predictors
    model = ours.model
    decoder = model.mask_decoder
    coords = torch.tensor([[[40.0, 30.0]], [[200.0, 120.0]]])
    sparse, dense = model.prompt_encoder(points=(coords, torch.ones(2, 1, dtype=torch.int)), boxes=None, masks=None)
    with torch.inference_mode():
        decoded = decoder.decode(ours.features, model.prompt_encoder.get_dense_pe(), sparse, dense)
        full = decoder.upscale_masks(decoded)
        extent = model.low_res_extent(ours.input_size)
        cut = decoder.upscale_masks(decoded, extent)
        assert extent[0] < full.shape[-2] and cut.shape[-2] < full.shape[-2]  # the image is not square
        expected = model.postprocess_masks(full, ours.input_size, ours.original_size)
        actual = model.postprocess_masks(cut, ours.input_size, ours.original_size)
    assert (expected - actual).abs().max().item() <= 1e-5


@pytest.mark.parametrize("use_extent", [False, True])
def test_upscaling_in_chunks_of_token_rows_gives_the_batch_pass_values(predictors, monkeypatch, use_extent):
    """On the CPU the upscaling goes a few token rows of one prompt at a time; force uneven
    chunks (3 rows, the last shorter) and compare with one pass over the whole batch."""
    from segany.modeling import mask_decoder

    _, ours = predictors
    model = ours.model
    decoder = model.mask_decoder
    coords = torch.tensor([[[40.0, 30.0]], [[200.0, 120.0]], [[120.0, 60.0]]])
    sparse, dense = model.prompt_encoder(points=(coords, torch.ones(3, 1, dtype=torch.int)), boxes=None, masks=None)
    extent = model.low_res_extent(ours.input_size) if use_extent else None
    with torch.inference_mode():
        decoded = decoder.decode(ours.features, model.prompt_encoder.get_dense_pe(), sparse, dense)
        with monkeypatch.context() as patch:
            patch.setattr(mask_decoder, "eager_cpu_inference", lambda *tensors: False)  # as on a GPU
            one_pass = decoder.upscale_masks(decoded, extent)
        token_rows, width = one_pass.shape[-2] // 4, decoded.grid[1]
        monkeypatch.setattr(mask_decoder, "UPSCALE_CHUNK_TOKENS", 3 * width)
        assert token_rows % 3 != 0
        chunked = decoder.upscale_masks(decoded, extent)
    # Matmuls over fewer rows may take other kernels, which round differently.
    assert chunked.shape == one_pass.shape
    assert (chunked - one_pass).abs().max().item() <= 1e-5


@pytest.mark.parametrize("multimask_output", [True, False])
def test_decoding_only_the_wanted_masks_gives_those_of_a_full_decode(predictors, multimask_output):
    """The final token->image attention runs only for the tokens that are read."""
    _, ours = predictors
    model = ours.model
    decoder = model.mask_decoder
    coords = torch.tensor([[[40.0, 30.0], [90.0, 70.0]], [[200.0, 120.0], [10.0, 10.0]]])
    labels = torch.tensor([[1, 0], [1, 1]], dtype=torch.int)
    sparse, dense = model.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
    pe = model.prompt_encoder.get_dense_pe()
    with torch.inference_mode():
        every = decoder.decode(ours.features, pe, sparse, dense)
        wanted = decoder.decode(ours.features, pe, sparse, dense, multimask_output=multimask_output)
        chosen = slice(1, None) if multimask_output else slice(0, 1)
        expected, actual = decoder.upscale_masks(every)[:, chosen], decoder.upscale_masks(wanted)
    assert actual.shape == expected.shape
    assert (actual - expected).abs().max().item() <= 1e-5
    assert (wanted.iou_predictions - every.iou_predictions[:, chosen]).abs().max().item() <= 1e-6


def test_sam_forward_matches(models, image):
    reference_model, our_model = models
    transform = segany.transforms.ResizeLongestSide(PARITY_CONFIG.image_size)
    resized = torch.as_tensor(transform.apply_image(image)).permute(2, 0, 1).float()
    coords = torch.as_tensor(transform.apply_coords(np.array([[[120.0, 80.0]]]), image.shape[:2])).float()
    batch = [
        {"image": resized, "original_size": image.shape[:2], "point_coords": coords, "point_labels": torch.ones(1, 1)},
        {"image": resized, "original_size": image.shape[:2], "boxes": torch.tensor([[20.0, 20.0, 200.0, 100.0]])},
    ]
    with torch.no_grad():
        expected = reference_model(batch, multimask_output=True)
    actual = our_model(batch, multimask_output=True)
    for want, got in zip(expected, actual):
        assert torch.equal(want["masks"], got["masks"])
        assert (want["iou_predictions"] - got["iou_predictions"]).abs().max() <= 1e-5


# Float reordering (SDPA, fused ops) moves logits by ~1e-6; a pixel whose official logit is
# that close to the threshold may flip. Masks must be identical everywhere else, and such
# pixels must be vanishingly rare.
THRESHOLD_BAND = 1e-4
MAX_BAND_FLIPS = 2


def reference_logits(reference, kwargs) -> np.ndarray:
    return reference.predict(**{**kwargs, "return_logits": True})[0]


def assert_outputs_match(expected, actual, return_logits: bool, logits: np.ndarray) -> None:
    masks, scores, low_res = expected
    our_masks, our_scores, our_low_res = actual
    assert our_masks.shape == masks.shape and our_masks.dtype == masks.dtype
    if return_logits:
        assert np.abs(our_masks - masks).max() <= 1e-4
    else:
        assert masks.any() and not masks.all(), "degenerate test: the mask should have structure"
        flipped = our_masks != masks
        assert np.all(np.abs(logits[flipped]) < THRESHOLD_BAND), "a mask differs away from the threshold"
        assert flipped.sum() <= MAX_BAND_FLIPS
    np.testing.assert_allclose(our_scores, scores, atol=1e-5, rtol=0)
    np.testing.assert_allclose(our_low_res, low_res, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["vit_b", "vit_l", "vit_h"])
def test_state_dict_layout_matches_official(name):
    builders = {"vit_b": official.build_sam_vit_b, "vit_l": official.build_sam_vit_l, "vit_h": official.build_sam_vit_h}
    with torch.device("meta"):
        reference = builders[name]().state_dict()
        ours = segany.build_sam(name).state_dict()
    assert list(ours) == list(reference)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in reference.items()}
