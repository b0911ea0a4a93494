"""Masks cut by a crop's inner edge are found from the image tokens under the edge strips and
never upscaled whole; the records are those of upscaling everything and filtering after."""

from __future__ import annotations

from itertools import product

import numpy as np
import pytest
import torch

from segany import automask
from segany.automask import SamAutomaticMaskGenerator, boxes_near_crop_edge, crop_boxes, crop_edge_strips
from segany.build import SamConfig, build_model
from segany.modeling import streams

SMALL_CONFIG = SamConfig(
    encoder_embed_dim=96, encoder_depth=2, encoder_num_heads=3, encoder_global_attn_indexes=(1,), image_size=320,
    window_size=7,
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(SMALL_CONFIG).eval()


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, size=(8, 12, 3)).astype(np.uint8)
    return np.kron(base, np.ones((20, 20, 1), dtype=np.uint8))[:150, :230]


CROPS = [
    ((160, 240), crop_boxes((160, 240), 1, 512 / 1500)[0]),
    ((684, 1024), crop_boxes((684, 1024), 2, 512 / 1500)[0]),
    ((100, 300), [[0, 0, 300, 100], [15, 0, 290, 100], [25, 30, 270, 85], [21, 21, 279, 79]]),
]


@pytest.mark.parametrize("image_size, boxes", CROPS)
def test_any_mask_reaching_an_edge_strip_is_dropped_by_the_crop_edge_filter(image_size, boxes):
    """Every box that holds a pixel of a strip (single pixels, and boxes stretched from the pixel
    to each side of the crop) is one that :func:`boxes_near_crop_edge` drops."""
    strips_seen = 0
    for crop_box in boxes:
        x0, y0, x1, y1 = crop_box
        width, height = x1 - x0, y1 - y0
        strips = crop_edge_strips(crop_box, image_size)
        if crop_box == [0, 0, image_size[1], image_size[0]]:
            assert strips == []
        for rows, columns in strips:
            strips_seen += 1
            ys, xs = np.meshgrid(np.array(rows), np.array(columns), indexing="ij")
            ys, xs = ys.ravel(), xs.ravel()
            for left, top, right, bottom in product((0, None), (0, None), (width - 1, None), (height - 1, None)):
                box = np.stack([
                    xs if left is None else np.full_like(xs, left),
                    ys if top is None else np.full_like(ys, top),
                    xs if right is None else np.full_like(xs, right),
                    ys if bottom is None else np.full_like(ys, bottom),
                ], axis=1)
                assert boxes_near_crop_edge(torch.from_numpy(box), crop_box, image_size).all(), (crop_box, rows, columns)
    assert strips_seen >= 4


def test_masks_in_window_are_that_window_of_the_whole_masks(model, image):
    """Upscaling only the tokens under a window and resizing only the window gives the whole
    masks' pixels there (margin 0), and a subset of them with a margin."""
    from segany.predictor import SamPredictor

    predictor = SamPredictor(model)
    predictor.set_image(image)
    points = torch.tensor([[[30.0, 40.0]], [[200.0, 100.0]], [[120.0, 20.0]], [[60.0, 140.0]]])
    coords = torch.as_tensor(predictor.transform.apply_coords(points.numpy(), predictor.original_size))
    with torch.inference_mode():
        sparse, dense = model.prompt_encoder(points=(coords, torch.ones(4, 1, dtype=torch.int)), boxes=None, masks=None)
        pe = model.prompt_encoder.get_dense_pe()
        decoded = model.mask_decoder.decode(predictor.features, pe, sparse, dense, multimask_output=True)
        whole = model.postprocess_masks(
            model.mask_decoder.upscale_masks(decoded), predictor.input_size, predictor.original_size, threshold=0.0
        )
        height, width = image.shape[:2]
        windows = [(range(height), range(21)), (range(height - 20, height), range(width)), (range(40, 90), range(100, 130))]
        for rows, columns in windows:
            exact = model.masks_in_window(decoded, predictor.input_size, predictor.original_size, rows, columns, 0.0)
            expected = whole[..., rows.start : rows.stop, columns.start : columns.stop]
            assert 0 < int(expected.sum()) < expected.numel()
            assert torch.equal(exact, expected)
            cautious = model.masks_in_window(decoded, predictor.input_size, predictor.original_size, rows, columns, 0.2)
            assert not (cautious & ~expected).any() and cautious.sum() < expected.sum()


def test_masks_cut_by_a_crop_edge_are_never_upscaled_whole(model, image, monkeypatch):
    """With crops, the generator gives the records it gives when it upscales every confident
    prompt and filters after, while upscaling fewer prompts whole."""
    settings = dict(points_per_side=6, crop_n_layers=1, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                    box_nms_thresh=1.0, crop_nms_thresh=1.0, points_per_batch=12)
    upscaled_whole = []
    upscale = model.mask_decoder.upscale_masks

    def counting_upscale(decoded, extent=None):
        if extent is not None:  # the generator's whole upscaling (a window's passes none)
            upscaled_whole.append(len(decoded.hyper_in))
        return upscale(decoded, extent)

    monkeypatch.setattr(model.mask_decoder, "upscale_masks", counting_upscale)
    monkeypatch.setattr(streams, "MAX_STREAMS", 1)
    early = SamAutomaticMaskGenerator(model, **settings).generate(image)
    with_strips = sum(upscaled_whole)
    upscaled_whole.clear()
    monkeypatch.setattr(automask, "crop_edge_strips", lambda crop_box, image_size: [])
    late = SamAutomaticMaskGenerator(model, **settings).generate(image)
    without_strips = sum(upscaled_whole)

    assert without_strips == 5 * 36
    assert 36 <= with_strips < without_strips  # the whole image's prompts, some of the crops'
    assert len(early) == len(late) > 0
    for ours, reference in zip(early, late):
        assert np.array_equal(ours["segmentation"], reference["segmentation"])
        assert ours["bbox"] == reference["bbox"] and ours["crop_box"] == reference["crop_box"]
        assert ours["predicted_iou"] == reference["predicted_iou"]
        assert ours["stability_score"] == reference["stability_score"]
