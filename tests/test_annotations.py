"""SA-1B and COCO annotation files: round trips, foreign segmentation forms, bad files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from segany.annotations import (
    coco_instances,
    read_coco_json,
    read_sa1b_json,
    to_rle,
    write_coco_json,
    write_sa1b_json,
)
from segany.masks import decode_rle, encode_rle

HEIGHT, WIDTH = 30, 40


def random_masks(rng: np.random.Generator, count: int) -> list[np.ndarray]:
    masks = []
    for _ in range(count):
        mask = np.zeros((HEIGHT, WIDTH), bool)
        top, left = rng.integers(0, 20), rng.integers(0, 30)
        mask[top : top + rng.integers(2, 10), left : left + rng.integers(2, 10)] = True
        masks.append(mask)
    return masks


def test_sa1b_round_trip_keeps_masks_and_extra_keys(tmp_path, rng):
    masks = random_masks(rng, 3)
    info = {"image_id": 7, "width": WIDTH, "height": HEIGHT, "file_name": "a.jpg"}
    annotations = [
        {"segmentation": encode_rle(mask), "predicted_iou": np.float32(0.5), "point_coords": [[1.0, 2.0]]}
        for mask in masks
    ]
    annotations[1]["segmentation"] = masks[1]  # a raw array is encoded on the way out
    path = tmp_path / "a.json"
    write_sa1b_json(path, info, annotations)
    read_info, read_annotations = read_sa1b_json(path)
    assert read_info == info
    assert len(read_annotations) == 3
    for mask, annotation in zip(masks, read_annotations):
        np.testing.assert_array_equal(decode_rle(annotation["segmentation"]), mask)
        assert isinstance(annotation["segmentation"]["counts"], str)
        assert annotation["area"] == mask.sum()
        ys, xs = np.nonzero(mask)
        assert annotation["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert annotation["predicted_iou"] == 0.5 and annotation["point_coords"] == [[1.0, 2.0]]
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temporary file left behind


def test_given_bbox_and_area_are_kept_as_they_are(tmp_path, rng):
    mask = random_masks(rng, 1)[0]
    info = {"width": WIDTH, "height": HEIGHT}
    write_sa1b_json(tmp_path / "b.json", info, [{"segmentation": mask, "bbox": [1, 2, 3, 4], "area": 99}])
    _, (annotation,) = read_sa1b_json(tmp_path / "b.json")
    assert annotation["bbox"] == [1, 2, 3, 4] and annotation["area"] == 99


def test_coco_instances_numbers_everything_and_round_trips(tmp_path, rng):
    masks = random_masks(rng, 5)
    images = [
        {"image_id": 100, "width": WIDTH, "height": HEIGHT, "file_name": "x.jpg"},
        {"width": WIDTH, "height": HEIGHT, "file_name": "y.jpg"},
        {"width": WIDTH, "height": HEIGHT, "file_name": "empty.jpg"},
    ]
    per_image = [
        [{"segmentation": encode_rle(m), "score": 0.9} for m in masks[:2]],
        [{"segmentation": encode_rle(m), "category_id": 2} for m in masks[2:]],
        [],
    ]
    categories = [{"name": "thing"}, {"name": "stuff"}]
    coco = coco_instances(images, per_image, categories)
    assert [c["id"] for c in coco["categories"]] == [1, 2]
    assert [image["id"] for image in coco["images"]] == [1, 2, 3]
    assert [a["id"] for a in coco["annotations"]] == [1, 2, 3, 4, 5]
    assert [a["image_id"] for a in coco["annotations"]] == [1, 1, 2, 2, 2]
    assert [a["category_id"] for a in coco["annotations"]] == [1, 1, 2, 2, 2]
    write_coco_json(tmp_path / "coco.json", coco)

    dataset = read_coco_json(tmp_path / "coco.json")
    assert list(dataset) == [1, 2, 3]
    assert [info["file_name"] for info, _ in dataset.values()] == ["x.jpg", "y.jpg", "empty.jpg"]
    read_masks = [decode_rle(a["segmentation"]) for _, annotations in dataset.values() for a in annotations]
    for expected, got in zip(masks, read_masks, strict=True):
        np.testing.assert_array_equal(got, expected)
    assert dataset[1][1][0]["score"] == 0.9
    # pycocotools reads what we write.
    from pycocotools.coco import COCO

    api = COCO(str(tmp_path / "coco.json"))
    np.testing.assert_array_equal(api.annToMask(api.loadAnns(3)[0]).astype(bool), masks[2])


def test_default_category_is_object():
    coco = coco_instances([{"width": 4, "height": 4}], [[{"segmentation": np.ones((4, 4), bool)}]], None)
    assert coco["categories"] == [{"id": 1, "name": "object", "supercategory": "object"}]
    assert coco["annotations"][0]["category_id"] == 1 and coco["annotations"][0]["area"] == 16


def test_coco_reader_accepts_polygons_and_uncompressed_rle(tmp_path):
    mask = np.zeros((HEIGHT, WIDTH), bool)
    mask[5:15, 10:30] = True
    column_major = mask.T.reshape(-1)
    changes = np.flatnonzero(column_major[1:] != column_major[:-1]) + 1
    counts = np.diff(np.concatenate([[0], changes, [mask.size]])).tolist()
    polygon = [10, 5, 30, 5, 30, 15, 10, 15]
    content = {
        "images": [{"id": 9, "width": WIDTH, "height": HEIGHT, "file_name": "p.jpg"}],
        "annotations": [
            {"id": 1, "image_id": 9, "category_id": 1, "iscrowd": 1, "segmentation": {"size": [HEIGHT, WIDTH], "counts": counts}},
            {"id": 2, "image_id": 9, "category_id": 1, "segmentation": [polygon]},
        ],
        "categories": [{"id": 1, "name": "a"}],
    }
    (tmp_path / "foreign.json").write_text(json.dumps(content))
    (info, (crowd, poly)) = read_coco_json(tmp_path / "foreign.json")[9]
    np.testing.assert_array_equal(decode_rle(crowd["segmentation"]), mask)
    assert crowd["iscrowd"] == 1
    expected_polygon = coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects([polygon], HEIGHT, WIDTH))).astype(bool)
    np.testing.assert_array_equal(decode_rle(poly["segmentation"]), expected_polygon)
    assert isinstance(poly["segmentation"]["counts"], str) and poly["area"] == expected_polygon.sum()


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ('{"image": {"width": 4, "height": 4}}', "SA-1B"),
        ('{"image": {"width": 4}, "annotations": []}', "'height' and 'width'"),
        ('{"image": {"width": 4, "height": 4}, "annotations": [{"bbox": [0, 0, 1, 1]}]}', "no 'segmentation'"),
    ],
)
def test_bad_sa1b_files_are_named_errors(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as error:
        read_sa1b_json(path)
    assert "bad.json" in str(error.value)


def test_missing_files_and_bad_coco_are_named_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        read_sa1b_json(tmp_path / "nowhere.json")
    (tmp_path / "orphan.json").write_text(json.dumps({
        "images": [{"id": 1, "width": 2, "height": 2}],
        "annotations": [{"id": 1, "image_id": 5, "segmentation": [[0, 0, 1, 0, 1, 1]]}],
    }))
    with pytest.raises(ValueError, match="unknown image_id 5"):
        read_coco_json(tmp_path / "orphan.json")
    with pytest.raises(ValueError, match="does not match the image"):
        to_rle(np.zeros((3, 3), bool), 4, 4)
    with pytest.raises(ValueError, match="one list per image"):
        coco_instances([{"width": 2, "height": 2}], [], None)


def test_a_failed_write_leaves_no_file(tmp_path):
    with pytest.raises(TypeError):
        write_sa1b_json(tmp_path / "c.json", {"width": 2, "height": 2, "bad": object()}, [])
    assert list(tmp_path.iterdir()) == []
