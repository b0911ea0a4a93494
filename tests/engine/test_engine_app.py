"""The annotation server's API on the tiny model: clicks to masks, objects, cache, prefetch, reload."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

import segany
from segany.engine.model import LOGIT_SCALE
from segany.io import read_image
from segany.masks import decode_rle, encode_rle


def image_id(client, path: str) -> int:
    return next(image["id"] for image in client.get("/api/images").json()["images"] if image["path"] == path)


def assert_same_candidates(reply, scores: np.ndarray, low_res: np.ndarray) -> dict:
    """A predict reply holds the predictor's scores and low-res logits (to int16 precision); returns its header."""
    assert reply.status_code == 200, reply.text
    data = json.loads(reply.headers["X-Proposal"])
    assert data["scores"] == pytest.approx(scores.tolist(), abs=1e-6)
    logits = np.frombuffer(reply.content, "<i2").reshape(data["shape"]) / data["logit_scale"]
    expected = low_res[:, :data["shape"][1], :data["shape"][2]]
    in_range = np.abs(expected) < 32  # int16 holds [-32, 32] logits; beyond, only the sign matters
    assert np.abs(logits - expected)[in_range].max() <= 0.5 / LOGIT_SCALE + 1e-6
    assert np.array_equal(logits > 0, np.rint(expected * LOGIT_SCALE) > 0)
    return data


def wait_for(condition, seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_the_page_and_its_files_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "segany" in page.text and "/static/app.js" in page.text
    for name in ("app.js", "masks.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200


def test_image_list_shows_progress(client):
    listing = client.get("/api/images").json()
    assert [image["path"] for image in listing["images"]] == ["a.png", "b.jpg", "sub/c.png"]
    assert listing["stats"]["images"] == 3 and listing["stats"]["objects"] == 0
    served = client.get(f"/api/images/{image_id(client, 'b.jpg')}/file")
    assert served.status_code == 200 and served.headers["content-type"] == "image/jpeg"


def test_a_click_returns_the_decoders_three_candidates(client, images_dir, tiny_checkpoint):
    target = image_id(client, "a.png")
    assert client.post(f"/api/images/{target}/embedding").json()["ready"]
    prompt = {"points": [[25, 20], [60, 50]], "labels": [1, 0]}
    reply = client.post(f"/api/images/{target}/predict", json=prompt)

    predictor = segany.SamPredictor(segany.build_sam("auto", tiny_checkpoint))
    predictor.set_image(read_image(images_dir / "a.png"))
    masks, scores, low_res = predictor.predict(np.array(prompt["points"]), np.array(prompt["labels"]))
    data = assert_same_candidates(reply, scores, low_res)
    # a.png is 60 x 80: resized to 192 x 256, i.e. 48 x 64 low-res pixels (+1 row for interpolation)
    assert data["input_size"] == [192, 256] and data["upscale"] == 4 and data["shape"] == [3, 49, 64]

    # accepting a candidate stores the predictor's exact full-size mask for that prompt
    for candidate in range(3):
        created = client.post(f"/api/images/{target}/objects", json={
            "prompts": prompt, "candidate": candidate, "model": data["model"], "seconds": 1.5})
        assert created.status_code == 201, created.text
        record = created.json()
        assert np.array_equal(decode_rle(record["rle"]), masks[candidate])
        assert record["score"] == pytest.approx(float(scores[candidate]), abs=1e-6)
        assert record["prompts"]["points"] == prompt["points"] and record["area"] == int(masks[candidate].sum())

    boxed = client.post(f"/api/images/{target}/predict", json={"box": [10, 10, 40, 30]})
    assert len(json.loads(boxed.headers["X-Proposal"])["scores"]) == 3


def test_accepting_a_mask_shown_by_an_older_model_asks_to_look_again(client):
    target = image_id(client, "a.png")
    stale = client.post(f"/api/images/{target}/objects", json={
        "prompts": {"points": [[5, 5]], "labels": [1]}, "candidate": 0, "model": "0123456789abcdef"})
    assert stale.status_code == 409 and "new model" in stale.json()["detail"]
    assert client.get(f"/api/images/{target}").json()["objects"] == []


def test_accept_edit_delete_and_done(client):
    target = image_id(client, "a.png")
    mask = np.zeros((60, 80), bool)
    mask[10:30, 20:40] = True
    created = client.post(f"/api/images/{target}/objects", json={
        "rle": encode_rle(mask), "label": "square", "seconds": 3.2,
        "prompts": {"points": [[25, 20]], "labels": [1]},
    })
    assert created.status_code == 201
    record = created.json()
    assert (record["label"], record["source"], record["seconds"], record["version"]) == ("square", "manual", 3.2, 1)
    assert np.array_equal(decode_rle(record["rle"]), mask) and record["bbox"] == [20, 10, 20, 20]
    objects = client.get(f"/api/images/{target}").json()["objects"]
    assert [obj["id"] for obj in objects] == [record["id"]] and objects[0]["prompts"]["points"] == [[25.0, 20.0]]

    edited = client.patch(f"/api/objects/{record['id']}", json={"version": 1, "label": "box", "seconds": 1.0}).json()
    assert (edited["label"], edited["seconds"], edited["version"]) == ("box", 4.2, 2)
    stale = client.patch(f"/api/objects/{record['id']}", json={"version": 1, "label": "lost"})
    assert stale.status_code == 409 and "changed by someone else" in stale.json()["detail"]

    assert client.post(f"/api/images/{target}/done", json={"done": True}).json()["done"] is True
    assert client.get("/api/images").json()["stats"]["done"] == 1
    assert client.delete(f"/api/objects/{record['id']}").status_code == 204
    assert client.delete(f"/api/objects/{record['id']}").status_code == 404
    assert client.get(f"/api/images/{target}").json()["objects"] == []


def test_embeddings_are_cached_on_disk_and_next_images_prefetched(make_client, tmp_path):
    first = make_client(prefetch=2)
    target = image_id(first, "a.png")
    first.post(f"/api/images/{target}/embedding")
    # the two images after a.png are embedded in the background
    assert wait_for(lambda: len(list((tmp_path / "cache").rglob("*.safetensors"))) == 3)
    first.__exit__(None, None, None)

    second = make_client()  # a restarted server: the encoder must not run again
    second.service.current.sam.image_encoder.forward = lambda *args: pytest.fail("the encoder ran again")
    for path in ("a.png", "b.jpg", "sub/c.png"):
        reply = second.post(f"/api/images/{image_id(second, path)}/predict", json={"points": [[5, 5]], "labels": [1]})
        assert reply.status_code == 200


def _answer(client, target: int) -> tuple[str, list[float]]:
    """(model revision, candidate scores) for a fixed click."""
    reply = client.post(f"/api/images/{target}/predict", json={"points": [[25, 20]], "labels": [1]})
    about = json.loads(reply.headers["X-Proposal"])
    return about["model"], about["scores"]


def test_a_new_checkpoint_is_picked_up_without_restart(make_client, tmp_path, tiny_checkpoint):
    checkpoint = tmp_path / "live.safetensors"
    checkpoint.write_bytes(tiny_checkpoint.read_bytes())
    client = make_client(checkpoint=checkpoint, watch_interval=0.1)
    target = image_id(client, "a.png")
    before_model, before_scores = _answer(client, target)

    torch.manual_seed(1)  # "training" wrote new weights
    segany.save_sam(segany.build_sam("tiny"), checkpoint)
    assert wait_for(lambda: client.get("/api/model").json()["revision"] != before_model)
    after_model, after_scores = _answer(client, target)
    assert after_model != before_model and after_scores != before_scores


def test_a_broken_checkpoint_keeps_the_old_model(make_client, tmp_path, tiny_checkpoint):
    checkpoint = tmp_path / "live.safetensors"
    checkpoint.write_bytes(tiny_checkpoint.read_bytes())
    client = make_client(checkpoint=checkpoint, watch_interval=None)
    target = image_id(client, "a.png")
    before = _answer(client, target)
    assert client.post("/api/model/reload").json()["reloaded"] is False  # unchanged file
    checkpoint.write_bytes(b"half a file")
    reply = client.post("/api/model/reload").json()
    assert reply["reloaded"] is False and "cannot read checkpoint" in reply["last_error"]
    assert _answer(client, target) == before


def test_a_decoder_only_update_keeps_the_cached_embeddings(make_client, tmp_path, tiny_checkpoint):
    checkpoint = tmp_path / "live.safetensors"
    checkpoint.write_bytes(tiny_checkpoint.read_bytes())
    client = make_client(checkpoint=checkpoint, watch_interval=None)
    target = image_id(client, "a.png")
    before = _answer(client, target)
    cached = sorted((tmp_path / "cache").rglob("*.safetensors"))
    assert len(cached) == 1

    model = segany.build_sam("auto", checkpoint)  # fine-tune only the decoder
    with torch.no_grad():
        for parameter in model.mask_decoder.parameters():
            parameter.add_(0.05)
    segany.save_sam(model, checkpoint)
    reply = client.post("/api/model/reload").json()
    assert reply["reloaded"] and reply["revision"] != before[0]
    client.service.current.sam.image_encoder.forward = lambda *args: pytest.fail("the encoder ran again")
    after = _answer(client, target)
    assert after[0] == reply["revision"] and after[1] != before[1]
    assert sorted((tmp_path / "cache").rglob("*.safetensors")) == cached
