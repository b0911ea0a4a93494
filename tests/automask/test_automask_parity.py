"""SamAutomaticMaskGenerator gives the official generator's records, on the same model and settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from oracle import assert_same_records, build_model_pair
from segany.automask import SamAutomaticMaskGenerator
from similarity_model import similarity_sam

official = pytest.importorskip("segment_anything", reason="the official package is the parity oracle")

# Lowered so that plenty of masks survive on test models.
THRESHOLDS = dict(pred_iou_thresh=0.5, stability_score_thresh=0.6)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """A real photo, small enough for fast tests and not square (so crops are not either)."""
    from PIL import Image

    with Image.open(Path(__file__).resolve().parents[2] / "segany" / "assets" / "dog.jpg") as source:
        return np.array(source.convert("RGB").resize((240, 160)))


def generate_both(model_for_official, model_for_ours, image, **settings) -> tuple[list[dict], list[dict]]:
    expected = official.SamAutomaticMaskGenerator(model_for_official, **settings).generate(image)
    actual = SamAutomaticMaskGenerator(model_for_ours, **settings).generate(image)
    return expected, actual


@pytest.fixture(scope="module")
def structured_model():
    return similarity_sam(seed=0)


STRUCTURED_CASES = {
    "grid": dict(points_per_side=12),
    "thresholds off": dict(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0),
    "crops": dict(points_per_side=8, crop_n_layers=1, output_mode="coco_rle"),
    "crops, downscaled grids": dict(points_per_side=12, crop_n_layers=2, crop_n_points_downscale_factor=2),
    "small regions": dict(points_per_side=8, min_mask_region_area=200, output_mode="uncompressed_rle"),
    "crops and small regions": dict(points_per_side=8, crop_n_layers=1, min_mask_region_area=200, points_per_batch=17),
    "explicit grids": dict(
        points_per_side=None, point_grids=[np.random.default_rng(0).uniform(0, 1, (50, 2))], box_nms_thresh=0.5
    ),
}


@pytest.mark.parametrize("case", list(STRUCTURED_CASES))
def test_same_records_as_official_on_structured_masks(structured_model, image, case):
    """Masks with real structure exercise NMS, crop edges and cleanup; one model serves both sides."""
    settings = {**THRESHOLDS, **STRUCTURED_CASES[case]}
    expected, actual = generate_both(structured_model, structured_model, image, **settings)
    assert len(expected) >= 10, "degenerate case: too few masks survive to compare"
    if settings.get("crop_n_layers"):
        assert len({tuple(record["crop_box"]) for record in expected}) > 1, "no mask from a crop survived"
    assert_same_records(expected, actual)


def test_small_region_cleanup_changes_masks(structured_model, image):
    """Guards the cleanup cases above against testing nothing."""
    settings = dict(THRESHOLDS, points_per_side=8)
    plain = SamAutomaticMaskGenerator(structured_model, **settings).generate(image)
    cleaned = SamAutomaticMaskGenerator(structured_model, min_mask_region_area=200, **settings).generate(image)
    areas = {tuple(record["point_coords"][0]) + (record["predicted_iou"],): record["area"] for record in plain}
    changed = [r for r in cleaned if areas.get(tuple(r["point_coords"][0]) + (r["predicted_iou"],)) != r["area"]]
    assert changed and len(cleaned) < len(plain)


@pytest.fixture(scope="module")
def random_models():
    """Official and segany models of the reduced parity config, with the same seeded random weights."""
    return build_model_pair(seed=0)


RANDOM_CASES = {
    # Random weights give masks over most of the image, which NMS would merge into one:
    # box_nms_thresh=1.0 keeps every mask so that all of them are compared.
    "all masks": dict(points_per_side=8, box_nms_thresh=1.0),
    "crops": dict(points_per_side=6, crop_n_layers=1, box_nms_thresh=1.0, crop_nms_thresh=1.0),
    "small regions": dict(points_per_side=6, min_mask_region_area=100, output_mode="coco_rle"),
    "small regions, all masks": dict(
        points_per_side=6, min_mask_region_area=100, box_nms_thresh=1.0, crop_nms_thresh=1.0
    ),
}


@pytest.mark.parametrize("case", list(RANDOM_CASES))
def test_same_records_as_official_on_random_weights(random_models, image, case):
    """The official model and generator against segany's, on identical seeded random weights.

    The two encoders round floats differently (embeddings agree to ~1e-5), so a handful of
    pixels whose logit sits at the cutoff may flip; everything else must agree.
    """
    reference_model, our_model = random_models
    settings = dict(pred_iou_thresh=0.0, stability_score_thresh=0.0, **RANDOM_CASES[case])
    expected, actual = generate_both(reference_model, our_model, image, **settings)
    assert len(expected) >= 1
    assert_same_records(expected, actual, max_flipped_pixels=20)


def test_identical_to_official_generator_on_segany_model(random_models, image):
    """With one model on both sides, segany's decoding (shared image side, upscaling only the
    tokens that reach the image) changes the records by float rounding at most."""
    _, our_model = random_models
    settings = dict(
        pred_iou_thresh=0.0, stability_score_thresh=0.0, points_per_side=8, box_nms_thresh=1.0, points_per_batch=40
    )
    expected, actual = generate_both(our_model, our_model, image, **settings)
    assert len(expected) == 3 * 64
    assert_same_records(expected, actual, max_flipped_pixels=5)


def test_output_modes_describe_the_same_masks(structured_model, image):
    from segany.masks import decode_rle

    records = {
        mode: SamAutomaticMaskGenerator(structured_model, points_per_side=8, output_mode=mode, **THRESHOLDS)
        .generate(image)
        for mode in ("binary_mask", "uncompressed_rle", "coco_rle")
    }
    assert len(records["binary_mask"]) > 0
    for binary, uncompressed, coco in zip(*records.values()):
        mask = binary["segmentation"]
        assert mask.shape == image.shape[:2]
        np.testing.assert_array_equal(decode_rle(uncompressed["segmentation"]), mask)
        np.testing.assert_array_equal(decode_rle(coco["segmentation"]), mask)
        assert binary["area"] == int(mask.sum())
        x, y, w, h = binary["bbox"]
        ys, xs = np.nonzero(mask)
        assert (x, y, x + w, y + h) == (xs.min(), ys.min(), xs.max(), ys.max())
        assert all(isinstance(v, int) for v in binary["bbox"] + binary["crop_box"] + [binary["area"]])


def test_generate_leaves_predictor_reusable_and_is_deterministic(structured_model, image):
    generator = SamAutomaticMaskGenerator(structured_model, points_per_side=6, **THRESHOLDS)
    first = generator.generate(image)
    second = generator.generate(image)
    assert_same_records(first, second)
    assert not generator.predictor.is_image_set


def test_prompt_streams_give_the_serial_records_and_restore_threads(random_models, image, monkeypatch):
    """On CPU the prompt batches run in parallel streams (one PyTorch thread each here): the
    records are those of one batch after another, and PyTorch's thread count is as it was."""
    import torch

    from segany.modeling import streams

    _, our_model = random_models
    settings = dict(
        pred_iou_thresh=0.0, stability_score_thresh=0.0, points_per_side=8, points_per_batch=8, box_nms_thresh=1.0,
        crop_n_layers=1, crop_nms_thresh=1.0,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        monkeypatch.setattr(streams, "MAX_STREAMS", 1)
        serial = SamAutomaticMaskGenerator(our_model, **settings).generate(image)
        monkeypatch.setattr(streams, "MAX_STREAMS", 2)
        batches_seen_by = set()
        run_batch = SamAutomaticMaskGenerator._batch_candidates

        def spy(self, *args, **kwargs):
            import threading

            batches_seen_by.add((threading.get_ident(), torch.get_num_threads(), torch.is_inference_mode_enabled()))
            return run_batch(self, *args, **kwargs)

        monkeypatch.setattr(SamAutomaticMaskGenerator, "_batch_candidates", spy)
        streamed = SamAutomaticMaskGenerator(our_model, **settings).generate(image)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert len({thread for thread, _, _ in batches_seen_by}) >= 2  # the caller and pool threads
    assert {(count, inference) for _, count, inference in batches_seen_by} == {(1, True)}
    assert len(serial) >= 3 * 64  # the whole image's masks at least (random masks touch crop edges)
    assert_same_records(serial, streamed)
