"""Text prompts in the annotation app: a tiny text-trained SAM and a tiny random CLIP, both local files."""

from __future__ import annotations

import json

import numpy as np
import pytest

import segany
from segany.cli import main
from segany.io import read_image
from segany.masks import decode_rle
from segany.text import OpenClipEmbedder

from test_engine_app import assert_same_candidates, image_id
from tiny_clip import ARCHITECTURE


@pytest.fixture(scope="module")
def clip(clip_weights) -> OpenClipEmbedder:
    return OpenClipEmbedder(ARCHITECTURE, clip_weights)


@pytest.fixture
def text_client(make_client, text_checkpoint, clip):
    return make_client(checkpoint=text_checkpoint, text_encoder=clip)


@pytest.mark.parametrize("prompt", [
    {"text": "a red square"},
    {"points": [[25, 20]], "labels": [1], "box": [10, 10, 50, 40], "text": "a red square"},
], ids=["text alone", "text with a point and a box"])
def test_a_text_prompt_answers_as_the_predictor_does(text_client, images_dir, text_checkpoint, clip, prompt):
    assert text_client.get("/api/model").json()["text_prompts"] is True
    target = image_id(text_client, "a.png")
    reply = text_client.post(f"/api/images/{target}/predict", json=prompt)

    predictor = segany.SamPredictor(segany.build_sam("auto", text_checkpoint), text_encoder=clip)
    predictor.set_image(read_image(images_dir / "a.png"))
    points = np.array(prompt["points"]) if "points" in prompt else None
    labels = np.array(prompt["labels"]) if "labels" in prompt else None
    box = np.array(prompt["box"]) if "box" in prompt else None
    masks, scores, low_res = predictor.predict(points, labels, box, text=prompt["text"])
    data = assert_same_candidates(reply, scores, low_res)

    # accepting stores the predictor's exact mask, and the text with the prompt
    created = text_client.post(f"/api/images/{target}/objects", json={
        "prompts": prompt, "candidate": 1, "model": data["model"]})
    assert created.status_code == 201, created.text
    assert np.array_equal(decode_rle(created.json()["rle"]), masks[1])
    assert created.json()["prompts"]["text"] == "a red square"


def test_repeated_phrases_skip_clip(text_client, clip, monkeypatch):
    asked = []
    embed_texts = clip.embed_texts
    monkeypatch.setattr(clip, "embed_texts", lambda texts: asked.append(list(texts)) or embed_texts(texts))
    target = image_id(text_client, "a.png")
    scores = [json.loads(text_client.post(f"/api/images/{target}/predict", json={"text": text})
                         .headers["X-Proposal"])["scores"] for text in ("a dog", "a cat", "a dog")]
    assert asked == [["a dog"], ["a cat"]] and scores[0] == scores[2]


@pytest.mark.parametrize("text, status, message", [
    ("", 422, "at least 1 character"),
    ("x" * 201, 422, "at most 200 characters"),
    (7, 422, "valid string"),
    (["a", "dog"], 422, "valid string"),
    ("   ", 400, "text must be a non-empty string"),
])
def test_malformed_text_is_refused_with_a_message(text_client, text, status, message):
    reply = text_client.post(f"/api/images/{image_id(text_client, 'a.png')}/predict", json={"text": text})
    assert reply.status_code == status
    detail = reply.json()["detail"]
    if status == 422:
        (problem,) = detail
        assert problem["loc"] == ["body", "text"] and message in problem["msg"]
    else:
        assert message in detail


def test_without_clip_the_server_says_text_is_unavailable(client):
    assert client.get("/api/model").json()["text_prompts"] is False
    reply = client.post(f"/api/images/{image_id(client, 'a.png')}/predict", json={"text": "a dog"})
    assert reply.status_code == 400 and "--clip-checkpoint" in reply.json()["detail"]


def test_a_new_checkpoint_without_text_projection_keeps_the_old_model(make_client, tmp_path, text_checkpoint,
                                                                     tiny_checkpoint, clip):
    live = tmp_path / "live.safetensors"
    live.write_bytes(text_checkpoint.read_bytes())
    client = make_client(checkpoint=live, text_encoder=clip, watch_interval=None)
    before = client.get("/api/model").json()["revision"]
    live.write_bytes(tiny_checkpoint.read_bytes())
    reply = client.post("/api/model/reload").json()
    assert reply["reloaded"] is False and "takes no text prompts" in reply["last_error"]
    assert reply["revision"] == before and reply["text_prompts"] is True


def test_serve_refuses_missing_clip_weights_or_a_model_without_text(images_dir, tiny_checkpoint, clip_weights,
                                                                    tmp_path, capsys):
    serve = ["serve", str(images_dir), "--db", str(tmp_path / "db.sqlite"), "--clip-model", ARCHITECTURE]
    cases = [
        (["--checkpoint", str(tiny_checkpoint), "--clip-checkpoint", str(tmp_path / "none.pt")], "CLIP weights not found"),
        (["--checkpoint", str(tiny_checkpoint), "--clip-checkpoint", str(clip_weights)], "takes no text prompts"),
    ]
    for extra, message in cases:
        assert main([*serve, *extra]) == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and message in error
    assert not (tmp_path / "db.sqlite").exists()
