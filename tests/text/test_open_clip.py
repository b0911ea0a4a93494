"""The real open_clip path on a small randomly initialised CLIP saved to a local file (no download)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import segany
from segany.cli import main
from segany.text import OpenClipEmbedder, mask_crop

from named_shapes import make_scene
from tiny_clip import ARCHITECTURE, WIDTH

pytest.importorskip("open_clip", reason="the optional extra segany[text] (open-clip-torch) is not installed")


def test_open_clip_embeds_crops_and_strings_into_one_width(clip_weights):
    embedder = OpenClipEmbedder(ARCHITECTURE, clip_weights)
    scene = make_scene(0)
    crops = [mask_crop(scene.image, mask, 2.0) for mask in scene.masks]
    images, texts = embedder.embed_images(crops), embedder.embed_texts(["a red circle", "a wheel"])
    assert images.shape == (3, WIDTH) and texts.shape == (2, WIDTH) and embedder.embed_dim == WIDTH
    assert torch.isfinite(images).all() and not torch.allclose(texts[0], texts[1])
    assert embedder.fingerprint == OpenClipEmbedder(ARCHITECTURE, clip_weights).fingerprint


def test_predictor_and_cli_take_text_through_open_clip(clip_weights, tmp_path, capsys):
    torch.manual_seed(0)
    model = segany.build_sam("tiny", text_embed_dim=WIDTH)
    predictor = segany.SamPredictor(model, text_encoder=OpenClipEmbedder(ARCHITECTURE, clip_weights))
    predictor.set_image(make_scene(0).image)
    masks, scores, _ = predictor.predict(text="a dog")
    assert masks.shape == (3, 128, 128) and scores.shape == (3,)

    checkpoint = segany.save_sam(model, tmp_path / "text_sam.safetensors")
    image = tmp_path / "scene.png"
    Image.fromarray(make_scene(0).image).save(image)
    out = tmp_path / "mask.png"
    code = main(["predict", str(image), "--checkpoint", str(checkpoint), "--text", "a red circle",
                 "--clip-model", ARCHITECTURE, "--clip-checkpoint", str(clip_weights), "--out", str(out)])
    assert code == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["text"] == "a red circle" and np.array(Image.open(out)).shape == (128, 128)


def test_clip_weights_of_another_architecture_are_refused(clip_weights):
    with pytest.raises(ValueError, match="cannot load CLIP weights"):
        OpenClipEmbedder("RN50", clip_weights)


@pytest.mark.parametrize("name, message", [
    ("no-such-clip", "unknown open_clip architecture"),
    ("hf-hub:someone/clip", "unknown open_clip architecture"),
    ("ViT-B-16-SigLIP", "Hugging Face hub"),
])
def test_architectures_that_would_download_are_refused(clip_weights, name, message):
    with pytest.raises(ValueError, match=message):
        OpenClipEmbedder(name, clip_weights)
