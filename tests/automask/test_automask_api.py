"""SamAutomaticMaskGenerator's arguments: official defaults, and clear errors for bad ones."""

from __future__ import annotations

import inspect
import subprocess
import sys

import numpy as np
import pytest

from segany.automask import SamAutomaticMaskGenerator
from segany.build import OFFICIAL_THRESHOLDS
from similarity_model import similarity_sam

official = pytest.importorskip("segment_anything", reason="the official package is the oracle")


@pytest.fixture(scope="module")
def model():
    return similarity_sam(seed=0)


def test_signature_and_defaults_match_official(model):
    ours = inspect.signature(SamAutomaticMaskGenerator.__init__).parameters
    theirs = inspect.signature(official.SamAutomaticMaskGenerator.__init__).parameters
    assert list(ours) == list(theirs)
    unset = {name for name, p in ours.items() if p.default is None and theirs[name].default is not None}
    assert unset == set(OFFICIAL_THRESHOLDS), "only the three filters may default to the weights' own values"
    assert {name: p.default for name, p in ours.items() if name not in unset} == {
        name: p.default for name, p in theirs.items() if name not in unset
    }
    # Weights without saved thresholds (all official ones) get the official values.
    generator = SamAutomaticMaskGenerator(model)
    assert {name: getattr(generator, name) for name in unset} == {name: theirs[name].default for name in unset}


def test_thresholds_saved_with_the_weights_apply_unless_given(model, monkeypatch):
    monkeypatch.setattr(model, "mask_generation_defaults", {"pred_iou_thresh": 0.4, "stability_score_offset": 2.0})
    generator = SamAutomaticMaskGenerator(model)
    assert (generator.pred_iou_thresh, generator.stability_score_thresh, generator.stability_score_offset) == (
        0.4, OFFICIAL_THRESHOLDS["stability_score_thresh"], 2.0)
    given = SamAutomaticMaskGenerator(model, pred_iou_thresh=0.7, stability_score_offset=0.5)
    assert (given.pred_iou_thresh, given.stability_score_offset) == (0.7, 0.5)


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(points_per_side=None), "exactly one of points_per_side or point_grids"),
        (dict(point_grids=[np.full((4, 2), 0.5)]), "exactly one of points_per_side or point_grids"),
        (dict(output_mode="png"), "output_mode must be one of"),
        (dict(points_per_side=0), "points_per_side must be a positive integer"),
        (dict(points_per_side=2.5), "points_per_side must be a positive integer"),
        (dict(points_per_batch=0), "points_per_batch must be a positive integer"),
        (dict(crop_n_layers=-1), "crop_n_layers must be a non-negative integer"),
        (
            dict(points_per_side=3, crop_n_layers=2, crop_n_points_downscale_factor=2),
            "leaves no points in crop layer 2",
        ),
        (dict(points_per_side=None, point_grids=[np.full((4, 2), 0.5)], crop_n_layers=1), "one per layer"),
        (dict(points_per_side=None, point_grids=[np.full((4, 3), 0.5)]), r"point_grids\[0\] must be a non-empty N x 2"),
        (dict(points_per_side=None, point_grids=[np.full((4, 2), 1.5)]), r"normalised to \[0, 1\]"),
    ],
)
def test_bad_settings_are_named(model, settings, message):
    with pytest.raises(ValueError, match=message):
        SamAutomaticMaskGenerator(model, **settings)


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((20, 30), dtype=np.uint8), "HxWx3"),
        (np.zeros((20, 30, 3), dtype=np.float32), "uint8"),
        (np.zeros((0, 30, 3), dtype=np.uint8), "empty"),
        ([[0, 0, 0]], "numpy array"),
    ],
)
def test_bad_images_are_named(model, image, message):
    with pytest.raises(ValueError, match=message):
        SamAutomaticMaskGenerator(model, points_per_side=2).generate(image)


def test_no_surviving_mask_gives_no_records(model):
    image = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    records = SamAutomaticMaskGenerator(model, points_per_side=4, pred_iou_thresh=1.0).generate(image)
    assert records == []


def test_the_generator_imports_its_nms_with_the_model_not_with_the_first_image():
    # In a fresh process: segany imports torchvision lazily, and its import (over a second)
    # must not land inside the first generate().
    probe = (
        "import sys; from segany.build import build_model, CONFIGS; from segany.automask import SamAutomaticMaskGenerator; "
        "before = 'torchvision.ops' in sys.modules; SamAutomaticMaskGenerator(build_model(CONFIGS['tiny'])); "
        "print(before, 'torchvision.ops' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "True"]
