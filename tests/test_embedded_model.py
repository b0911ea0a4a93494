"""The embedded default model ships in the package and runs every command with no checkpoint."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

import segany
from segany.build import EMBEDDED_WEIGHTS
from segany.cli import main
from segany.cli.demo import SAMPLE, SAMPLE_POINT


def test_default_is_the_bundled_light_model_under_25_mb():
    assert EMBEDDED_WEIGHTS.stat().st_size <= 25 * 2**20
    model = segany.build_sam("default")
    assert model.config.encoder == "efficientnet_lite0" and model.image_encoder.img_size == 512
    assert not model.training


def test_demo_segments_the_dog_it_clicks(tmp_path, capsys):
    out = tmp_path / "demo.png"
    assert main(["demo", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "embedded model" in printed
    with Image.open(SAMPLE) as photo, Image.open(out) as overlay:
        assert overlay.size == photo.size
    predictor = segany.SamPredictor(segany.build_sam("default"))
    predictor.set_image(segany.read_image(SAMPLE))
    masks, scores, _ = predictor.predict(np.array([SAMPLE_POINT]), np.array([1]))
    best = masks[int(np.argmax(scores))]
    x, y = (int(v) for v in SAMPLE_POINT)
    assert best[y, x], "the chosen mask misses the click"
    assert 0.01 < best.mean() < 0.9, "the mask should be an object, not nothing or everything"


def test_predict_without_checkpoint_says_it_uses_the_embedded_model(tmp_path, capsys):
    out = tmp_path / "mask.png"
    assert main(["predict", str(SAMPLE), "--point", "200,420", "--out", str(out)]) == 0
    assert "embedded default model" in capsys.readouterr().err
    scores = json.loads(out.with_suffix(".json").read_text())
    assert out.exists() and scores


def test_automatic_masks_of_the_embedded_model_use_its_own_filters_and_find_the_dog(tmp_path, capsys):
    model = segany.build_sam("default")
    own = model.mask_generation_defaults
    assert set(own) == {"pred_iou_thresh", "stability_score_thresh"}
    assert own["pred_iou_thresh"] < 0.88, "the official filter keeps none of this model's masks"
    records = segany.SamAutomaticMaskGenerator(model, points_per_side=16).generate(segany.read_image(SAMPLE))
    assert records and all(r["predicted_iou"] > own["pred_iou_thresh"] for r in records)
    x, y = (int(v) for v in SAMPLE_POINT)
    on_dog = [r for r in records if r["segmentation"][y, x]]
    assert any(0.01 < r["segmentation"].mean() < 0.9 for r in on_dog), "no kept mask is the clicked dog"

    assert main(["auto", str(SAMPLE), "--out", str(tmp_path / "out"), "--points-per-side", "8"]) == 0
    assert f"pred_iou_thresh {own['pred_iou_thresh']}" in capsys.readouterr().err
