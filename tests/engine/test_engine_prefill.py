"""The semi-automatic stage: prefilled masks from the automatic generator, without duplicates."""

from __future__ import annotations

import numpy as np

import segany
from segany.automask import SamAutomaticMaskGenerator
from segany.engine import prefill
from segany.io import read_image
from segany.masks import decode_rle, encode_rle


def rect(x0: int, y0: int, x1: int, y1: int) -> dict:
    mask = np.zeros((40, 40), bool)
    mask[y0:y1, x0:x1] = True
    return encode_rle(mask)


def test_new_ground_drops_masks_mostly_annotated_already():
    existing = [rect(0, 0, 20, 20)]
    candidates = [
        rect(0, 0, 20, 20),    # the existing object again
        rect(2, 2, 18, 18),    # inside it
        rect(10, 0, 30, 20),   # half on it: new enough
        rect(25, 25, 35, 35),  # elsewhere
        rect(25, 25, 35, 35),  # the same again: kept once
    ]
    assert prefill.new_ground(candidates, existing) == [2, 3]


def test_prefill_stores_the_generators_masks_as_prefilled(client, images_dir, tiny_checkpoint, monkeypatch):
    # The tiny random model is never confident: accept whatever it proposes for this test.
    relaxed = {"pred_iou_thresh": -100.0, "stability_score_thresh": 0.0, "points_per_side": 4}
    monkeypatch.setattr(prefill, "PREFILL_OPTIONS", relaxed)
    target = next(image for image in client.get("/api/images").json()["images"] if image["path"] == "a.png")

    reply = client.post(f"/api/images/{target['id']}/prefill")
    assert reply.status_code == 200
    added = reply.json()["added"]
    assert added and reply.json()["image"]["prefilled"] is True
    assert {obj["source"] for obj in added} == {"prefilled"} and all(obj["seconds"] == 0 for obj in added)

    generated = SamAutomaticMaskGenerator(segany.build_sam("auto", tiny_checkpoint), output_mode="coco_rle",
                                          **relaxed).generate(read_image(images_dir / "a.png"))
    generated.sort(key=lambda record: -record["predicted_iou"])
    expected = prefill.new_ground([record["segmentation"] for record in generated], [])
    assert len(added) == len(expected)
    for obj, index in zip(added, expected):
        assert np.array_equal(decode_rle(obj["rle"]), decode_rle(generated[index]["segmentation"]))
        assert obj["score"] == generated[index]["predicted_iou"]

    again = client.post(f"/api/images/{target['id']}/prefill").json()
    assert again["added"] == []  # everything it proposes is annotated already
