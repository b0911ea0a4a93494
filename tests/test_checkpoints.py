"""Checkpoint loading: official .pth state dicts, safetensors, auto config, clear errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import segany
from segany.build import CONFIGS, build_model, infer_config, save_sam


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    torch.manual_seed(3)
    model = segany.build_sam("tiny")
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    torch.save(model.state_dict(), path)
    return model, path


def embeddings_equal(a: segany.Sam, b: segany.Sam) -> bool:
    x = torch.randn(1, 3, a.img_size, a.img_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return torch.equal(a.image_encoder(x), b.image_encoder(x))


def test_pth_loads_by_name_and_auto(tiny_checkpoint):
    model, path = tiny_checkpoint
    assert embeddings_equal(model, segany.build_sam("tiny", path))
    assert embeddings_equal(model, segany.sam_model_registry["auto"](checkpoint=path))
    # Official-style call: the default registry entry reads the configuration off the checkpoint.
    assert embeddings_equal(model, segany.sam_model_registry["default"](checkpoint=path))
    assert embeddings_equal(model, segany.build_sam(str(path)))


def test_safetensors_round_trip_keeps_config(tmp_path):
    torch.manual_seed(4)
    config = dataclasses.replace(CONFIGS["tiny"], encoder_depth=3, encoder_global_attn_indexes=(2,))
    model = build_model(config)
    path = save_sam(model, tmp_path / "model.safetensors")
    loaded = segany.build_sam("auto", path)
    assert loaded.config == config
    assert embeddings_equal(model, loaded)
    assert not list(tmp_path.glob("*.part")), "atomic write left a temporary file"


def test_generator_thresholds_travel_with_safetensors_weights(tmp_path):
    model = segany.build_sam("tiny")
    assert model.mask_generation_defaults == {}
    model.mask_generation_defaults = {"pred_iou_thresh": 0.5, "stability_score_thresh": 0.8}
    loaded = segany.build_sam("auto", save_sam(model, tmp_path / "model.safetensors"))
    assert loaded.mask_generation_defaults == {"pred_iou_thresh": 0.5, "stability_score_thresh": 0.8}
    plain = segany.build_sam("auto", save_sam(segany.build_sam("tiny"), tmp_path / "plain.safetensors"))
    assert plain.mask_generation_defaults == {}


@pytest.mark.parametrize("stored", ['{"pred_iou": 0.5}', '{"pred_iou_thresh": "high"}', "[0.5]", "not json"])
def test_bad_saved_generator_thresholds_name_the_file(tmp_path, stored):
    from safetensors.torch import save_file

    model = segany.build_sam("tiny")
    path = tmp_path / "odd.safetensors"
    save_file(model.state_dict(), path, metadata={"segany_config": model.config.to_json(),
                                                  "segany_mask_generation": stored})
    with pytest.raises(ValueError, match="odd.safetensors.*mask generation defaults"):
        segany.build_sam("auto", path)


@pytest.mark.parametrize("name", ["vit_b", "vit_l", "vit_h", "tiny"])
def test_config_inferred_from_shapes(name):
    with torch.device("meta"):
        state_dict = segany.build_sam(name).state_dict()
    assert infer_config(state_dict) == CONFIGS[name]


def test_mismatched_checkpoint_names_keys_and_fitting_config(tiny_checkpoint):
    _, path = tiny_checkpoint
    with pytest.raises(ValueError) as error:
        segany.build_sam("vit_b", path)
    message = str(error.value)
    assert str(path) in message and "shape mismatches" in message and "missing keys" in message
    assert "fits model type 'tiny'" in message


def test_truncated_checkpoint(tiny_checkpoint, tmp_path):
    _, path = tiny_checkpoint
    broken = tmp_path / "broken.pth"
    broken.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="broken.pth"):
        segany.build_sam("tiny", broken)


def test_foreign_state_dict(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(ValueError, match="not a Segment Anything state dict"):
        segany.build_sam("auto", path)


def test_missing_checkpoint_and_unknown_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        segany.build_sam("vit_b", tmp_path / "nope.pth")
    with pytest.raises(ValueError, match="unknown model type 'vit_x'"):
        segany.build_sam("vit_x")


def test_official_checkpoint_loads_into_segany(tmp_path):
    from oracle import PARITY_CONFIG, build_model_pair

    reference, _ = build_model_pair(seed=5)
    path = tmp_path / "official.pth"
    torch.save(reference.state_dict(), path)
    ours = segany.build_sam("auto", path)
    assert ours.config == PARITY_CONFIG
    image = np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    from segment_anything import SamPredictor as OfficialPredictor

    official_predictor, predictor = OfficialPredictor(reference), segany.SamPredictor(ours)
    official_predictor.set_image(image)
    predictor.set_image(image)
    assert (official_predictor.features - predictor.features).abs().max() <= 1e-4
