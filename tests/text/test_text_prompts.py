"""Text prompts: the optional projection, checkpoints, the predictor, training options and the errors."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import segany
from segany.build import CONFIGS, infer_config, save_sam
from segany.embedding_cache import EmbeddingCache
from segany.text import OpenClipEmbedder, embed_crops, mask_crop
from segany.train.config import config_from_dict
from segany.train.loop import build_training_model, train
from segany.train.text_prompts import CropPrompter

from named_shapes import NAMES, NamedShapeEmbedder, experiment_config, make_scene

WIDTH = 32  # NamedShapeEmbedder's embedding width


@pytest.fixture(scope="module")
def text_model() -> segany.Sam:
    torch.manual_seed(0)
    return segany.build_sam("tiny", text_embed_dim=WIDTH)


@pytest.fixture(scope="module")
def predictor(text_model) -> segany.SamPredictor:
    predictor = segany.SamPredictor(text_model, text_encoder=NamedShapeEmbedder())
    predictor.set_image(make_scene(0).image)
    return predictor


def test_official_configurations_have_no_text_parameters():
    for name in ("vit_b", "vit_l", "vit_h", "tiny"):
        assert CONFIGS[name].text_embed_dim == 0
    keys = segany.build_sam("tiny").state_dict()
    assert not [key for key in keys if "text" in key]


def test_text_projection_maps_clip_width_to_prompt_width(text_model):
    projection = text_model.prompt_encoder.text_projection
    assert (projection.in_features, projection.out_features) == (WIDTH, text_model.prompt_encoder.embed_dim)


def test_text_tokens_alone_and_with_points_and_boxes(text_model):
    encoder = text_model.prompt_encoder
    text = torch.randn(2, 1, WIDTH)
    points = (torch.rand(2, 3, 2) * 200, torch.ones(2, 3, dtype=torch.int))
    boxes = torch.tensor([[10.0, 10, 90, 90], [20, 30, 60, 70]])
    with torch.no_grad():
        alone, dense = encoder(None, None, None, text=text)
        mixed, _ = encoder(points, boxes, None, text=text)
        without, _ = encoder(points, boxes, None)
    assert alone.shape == (2, 1, encoder.embed_dim) and dense.shape[0] == 2
    assert mixed.shape == (2, 3 + 2 + 1, encoder.embed_dim)
    torch.testing.assert_close(mixed[:, :5], without)
    torch.testing.assert_close(mixed[:, 5:], alone)
    # Only the direction of an embedding counts (CLIP aligns directions, not lengths).
    with torch.no_grad():
        torch.testing.assert_close(encoder(None, None, None, text=7 * text)[0], alone)


def test_text_models_save_and_load_with_their_width(text_model, tmp_path):
    path = save_sam(text_model, tmp_path / "text.safetensors")
    loaded = segany.build_sam("auto", path)
    assert loaded.config.text_embed_dim == WIDTH
    torch.testing.assert_close(loaded.prompt_encoder.text_projection.weight, text_model.prompt_encoder.text_projection.weight)
    assert infer_config(text_model.state_dict()).text_embed_dim == WIDTH  # .pth files: read off the shapes
    with pytest.raises(ValueError, match="unexpected keys: prompt_encoder.text_projection"):
        segany.build_sam("tiny", path)


def test_fine_tuning_an_official_style_checkpoint_adds_a_fresh_projection(tmp_path):
    torch.manual_seed(1)
    plain = segany.build_sam("tiny")
    path = tmp_path / "plain.pth"
    torch.save(plain.state_dict(), path)
    extended = segany.build_sam("auto", path, text_embed_dim=WIDTH)
    state = extended.state_dict()
    assert all(torch.equal(state[key], value) for key, value in plain.state_dict().items())
    assert state["prompt_encoder.text_projection.weight"].shape == (256, WIDTH)


def test_predict_by_text_alone_and_with_a_point(predictor):
    masks, scores, logits = predictor.predict(text="red circle")
    assert masks.shape == (3, 128, 128) and scores.shape == (3,) and logits.shape == (3, 64, 64)
    masks, scores, _ = predictor.predict(np.array([[40.0, 50.0]]), np.array([1]), text="blue square",
                                         multimask_output=False)
    assert masks.shape == (1, 128, 128)


def test_predict_torch_takes_batched_embeddings(predictor):
    embeddings = NamedShapeEmbedder().embed_texts(list(NAMES[:4]))[:, None]
    masks, scores, _ = predictor.predict_torch(None, None, text_embeddings=embeddings)
    assert masks.shape[:2] == (4, 3) and scores.shape == (4, 3)


def test_sam_forward_takes_text_embeddings(text_model):
    image = torch.randint(0, 255, (3, 256, 256), dtype=torch.uint8).float()
    record = {"image": image, "original_size": (256, 256), "text_embeddings": torch.randn(2, 1, WIDTH)}
    (output,) = text_model([record], multimask_output=True)
    assert output["masks"].shape == (2, 3, 256, 256)


def test_text_on_a_model_without_projection_is_refused():
    plain = segany.build_sam("tiny")
    with pytest.raises(ValueError, match="takes no text prompts"):
        segany.SamPredictor(plain, text_encoder=NamedShapeEmbedder())
    with pytest.raises(ValueError, match="takes no text prompts"):
        plain.prompt_encoder(None, None, None, text=torch.randn(1, 1, WIDTH))


def test_embedding_width_mismatch_is_refused(text_model):
    with pytest.raises(ValueError, match="width mismatch: got 16, this model takes 32"):
        segany.SamPredictor(text_model, text_encoder=NamedShapeEmbedder(embed_dim=16))
    with pytest.raises(ValueError, match="width mismatch"):
        text_model.prompt_encoder(None, None, None, text=torch.randn(1, 1, 16))
    with pytest.raises(ValueError, match="B x T x D"):
        text_model.prompt_encoder(None, None, None, text=torch.randn(1, WIDTH))


def test_text_without_a_text_encoder_or_empty_is_refused(text_model, predictor):
    bare = segany.SamPredictor(text_model)
    bare.set_image(make_scene(0).image)
    with pytest.raises(ValueError, match="need a text encoder"):
        bare.predict(text="red circle")
    with pytest.raises(ValueError, match="non-empty string"):
        predictor.predict(text="  ")


@pytest.mark.parametrize("checkpoint, error, message", [
    (None, ValueError, "no CLIP weights given"),
    ("missing/clip.bin", FileNotFoundError, "CLIP weights not found"),
    (".", ValueError, "got a folder"),
])
def test_clip_weights_must_be_a_local_file(checkpoint, error, message):
    with pytest.raises(error, match=message):
        OpenClipEmbedder("ViT-B-32", checkpoint)


def test_mask_crop_is_centred_square_enlarged_and_padded():
    image = np.full((50, 60, 3), 7, np.uint8)
    mask = np.zeros((50, 60), bool)
    mask[20:30, 10:14] = True  # 10 high, 4 wide
    crop = mask_crop(image, mask, 2.0)
    assert crop.shape == (20, 20, 3) and (crop == 7).all()
    mask[:] = False
    mask[0:10, 0:10] = True  # in the corner: the outside is black, the object stays central
    crop = mask_crop(image, mask, 2.0)
    assert crop.shape == (20, 20, 3)
    assert (crop[:5, :] == 0).all() and (crop[5:15, 5:15] == 7).all()
    with pytest.raises(ValueError, match="empty"):
        mask_crop(image, np.zeros((50, 60), bool), 2.0)


def test_crop_embeddings_are_cached_on_disk(tmp_path):
    scene = make_scene(1)
    crops = [mask_crop(scene.image, mask, 1.5) for mask in scene.masks]
    embedder = NamedShapeEmbedder()
    first = embed_crops(embedder, crops, EmbeddingCache(tmp_path))
    assert len(list(tmp_path.rglob("*.safetensors"))) == 3 and len(embedder.recognised) == 3
    again = embed_crops(embedder, crops, EmbeddingCache(tmp_path))
    assert len(embedder.recognised) == 3  # nothing recomputed
    torch.testing.assert_close(first, again)
    assert embedder.recognised == scene.names


def test_crop_prompter_draws_the_configured_share_per_image(tmp_path):
    from segany.train.data import TrainingSet

    config = experiment_config(1)
    config.text.probability = 0.5
    data = TrainingSet([make_scene(seed) for seed in range(40)], 128, config.data)
    prompter = CropPrompter(config.text, NamedShapeEmbedder(), tmp_path)
    examples = [data[position] for position in range(40)]
    prompts = prompter.prompts(examples)
    assert prompts.chosen.shape == (120,) and 0.35 < prompts.chosen.float().mean() < 0.65
    assert (prompts.embeddings[~prompts.chosen] == 0).all() and (prompts.embeddings[prompts.chosen] != 0).any()
    assert torch.equal(prompter.prompts(examples).chosen, prompts.chosen)  # a function of the image's seed


def test_mixed_text_point_and_box_training_runs_and_saves_a_text_model(tmp_path):
    config = experiment_config(2)
    config.text.probability = 0.5
    config.prompts.rounds = 3  # error points and a mask-only round after the text prompt
    weights = train(config, tmp_path, dataset=[make_scene(seed) for seed in range(4)],
                    text_encoder=NamedShapeEmbedder())
    assert segany.build_sam("auto", weights).config.text_embed_dim == WIDTH
    assert list((tmp_path / "text_embeddings").rglob("*.safetensors"))


def test_training_config_errors_name_the_setting(tmp_path):
    with pytest.raises(ValueError, match="text.probability"):
        config_from_dict({"text": {"probability": 1.5}}).validate()
    with pytest.raises(ValueError, match="do not freeze prompt_encoder"):
        config_from_dict({"text": {"probability": 0.5}, "model": {"freeze": ["prompt_encoder"]}}).validate()
    model_config = config_from_dict({"model": {"type": "tiny", "overrides": {"text_embed_dim": 64}}}).model
    with pytest.raises(ValueError, match="width mismatch"):
        build_training_model(model_config, 0, text_embed_dim=WIDTH)
    with pytest.raises(ValueError, match="no CLIP weights given"):
        train(config_from_dict({"text": {"probability": 0.5}, "device": "cpu", "model": {"type": "tiny"},
                                "batch_size": 1}), tmp_path, dataset=[make_scene(0)])


def test_cli_text_without_clip_weights_is_one_error_line(text_model, tmp_path, capsys):
    from PIL import Image

    from segany.cli import main

    image = tmp_path / "scene.png"
    Image.fromarray(make_scene(0).image).save(image)
    checkpoint = save_sam(text_model, tmp_path / "text.safetensors")
    out = tmp_path / "mask.png"
    code = main(["predict", str(image), "--checkpoint", str(checkpoint), "--text", "red circle", "--out", str(out)])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and "--clip-checkpoint" in error[0]
    assert not out.exists()


def test_missing_open_clip_is_a_clear_error(tmp_path, monkeypatch):
    weights = tmp_path / "clip.pt"
    weights.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "open_clip", None)  # as if not installed
    with pytest.raises(ValueError, match=r"pip install 'segany\[text\]'"):
        OpenClipEmbedder("ViT-B-32", weights)
