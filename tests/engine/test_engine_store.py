"""The SQLite annotation store: validation, edits with conflict detection, training records."""

from __future__ import annotations

import sqlite3
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
from PIL import Image

from segany.engine.store import AnnotationStore, ConflictError, training_records
from segany.io import list_images, read_image
from segany.masks import decode_rle, encode_rle


@pytest.fixture
def store(tmp_path, images_dir) -> AnnotationStore:
    store = AnnotationStore(tmp_path / "db.sqlite", images_dir)
    assert store.add_images(list_images([images_dir])) == []
    return store


def box_mask(image, x0, y0, x1, y1) -> np.ndarray:
    mask = np.zeros((image.height, image.width), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_images_are_registered_once_with_the_size_read_image_gives(tmp_path, store, images_dir):
    rotated = images_dir / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees: width and height swap on reading
    Image.new("RGB", (40, 20), "white").save(rotated, exif=exif)
    store.add_images(list_images([images_dir]))
    store.add_images(list_images([images_dir]))  # registering again adds nothing
    records = {image.path: image for image in store.images()}
    assert sorted(records) == ["a.png", "b.jpg", "rotated.jpg", "sub/c.png"]
    for path, image in records.items():
        assert read_image(images_dir / path).shape[:2] == (image.height, image.width)
    assert (records["rotated.jpg"].height, records["rotated.jpg"].width) == (40, 20)


def test_unreadable_and_outside_files_are_reported_not_registered(tmp_path, store, images_dir):
    (images_dir / "broken.png").write_bytes(b"not an image")
    outside = tmp_path / "outside.png"
    Image.new("RGB", (8, 8)).save(outside)
    problems = store.add_images([images_dir / "broken.png", outside])
    assert len(problems) == 2 and "broken.png" in problems[0] and "outside the images folder" in problems[1]
    assert len(store.images()) == 3


def test_objects_keep_mask_label_source_seconds_and_box(store):
    image = store.image_by_path("a.png")
    mask = box_mask(image, 10, 5, 30, 25)
    record = store.add_object(image.id, encode_rle(mask), label=" dog ", seconds=4.5, score=0.9,
                              prompts={"points": [[12.0, 7.0]], "labels": [1], "box": None})
    assert np.array_equal(decode_rle(record.rle), mask)
    assert (record.area, record.bbox, record.label, record.source, record.seconds) == (400, [10, 5, 20, 20], "dog", "manual", 4.5)
    assert record.prompts["points"] == [[12.0, 7.0]] and record.version == 1
    assert store.image(image.id).objects == 1
    assert store.stats()["objects_by_source"] == {"manual": 1, "prefilled": 0}


@pytest.mark.parametrize(
    "rle, message",
    [
        ({"size": [10, 10], "counts": "0"}, "does not match the image size"),
        ({"size": [60, 80], "counts": "zzzz"}, "malformed"),
        ({"size": [60, 80], "counts": ""}, "malformed"),
        ({"size": [60, 80], "counts": encode_rle(np.ones((60, 80), bool))["counts"][:-1]}, "malformed"),
        ({"size": [60, 80], "counts": encode_rle(np.zeros((60, 80), bool))["counts"]}, "empty"),
        ({"size": [60, 80]}, "COCO RLE"),
        ("not a dict", "COCO RLE"),
    ],
)
def test_bad_masks_are_refused(store, rle, message):
    image = store.image_by_path("a.png")
    with pytest.raises(ValueError, match=message):
        store.add_object(image.id, rle)
    assert store.objects(image.id) == []


def test_bad_fields_are_refused_and_unknown_ids_are_key_errors(store):
    image = store.image_by_path("a.png")
    rle = encode_rle(box_mask(image, 0, 0, 5, 5))
    with pytest.raises(ValueError, match="source"):
        store.add_object(image.id, rle, source="robot")
    with pytest.raises(ValueError, match="label"):
        store.add_object(image.id, rle, label="x" * 201)
    with pytest.raises(ValueError, match="seconds"):
        store.add_object(image.id, rle, seconds=float("nan"))
    with pytest.raises(KeyError):
        store.add_object(999, rle)
    with pytest.raises(KeyError):
        store.delete_object(999)
    with pytest.raises(KeyError):
        store.update_object(999, 1, label="x")


def test_edits_bump_the_version_add_time_and_refuse_stale_versions(store):
    image = store.image_by_path("a.png")
    first = store.add_object(image.id, encode_rle(box_mask(image, 0, 0, 10, 10)), seconds=2)
    relabelled = store.update_object(first.id, 1, label="cat", seconds=1.5)
    assert (relabelled.label, relabelled.seconds, relabelled.version, relabelled.area) == ("cat", 3.5, 2, 100)
    with pytest.raises(ConflictError, match="changed by someone else"):
        store.update_object(first.id, 1, label="dog")  # made from version 1, which is gone
    reshaped = store.update_object(first.id, 2, rle=encode_rle(box_mask(image, 0, 0, 4, 5)))
    assert (reshaped.label, reshaped.area, reshaped.version) == ("cat", 20, 3)
    store.delete_object(first.id)
    assert store.objects(image.id) == []


def test_set_done_and_adding_many_objects_at_once(store):
    image = store.image_by_path("b.jpg")
    assert store.set_done(image.id, True).done
    masks = [encode_rle(box_mask(image, i, i, i + 5, i + 5)) for i in range(3)]
    added = store.add_objects(image.id, [{"rle": m, "source": "prefilled", "score": 0.95} for m in masks],
                              mark_prefilled=True)
    assert [record.source for record in added] == ["prefilled"] * 3
    assert store.image(image.id).prefilled
    with pytest.raises(ValueError):  # one bad mask: none of the batch is written
        store.add_objects(image.id, [{"rle": masks[0]}, {"rle": {"size": [1, 1], "counts": "0"}}])
    assert len(store.objects(image.id)) == 3


def test_training_records_give_image_paths_and_accepted_masks(tmp_path, store, images_dir):
    image = store.image_by_path("sub/c.png")
    masks = [box_mask(image, 0, 0, 10, 10), box_mask(image, 20, 20, 40, 30)]
    for mask in masks:
        store.add_object(image.id, encode_rle(mask))
    unreviewed = store.image_by_path("b.jpg")  # machine masks count once a person marked the image done
    store.add_object(unreviewed.id, encode_rle(box_mask(unreviewed, 0, 0, 5, 5)), source="prefilled")
    records = list(training_records(tmp_path / "db.sqlite"))
    assert len(records) == 1  # images without (accepted) objects are not training data
    path, rles = records[0]
    assert path == images_dir / "sub" / "c.png" and path.exists()
    assert [np.array_equal(decode_rle(rle), mask) for rle, mask in zip(rles, masks)] == [True, True]
    store.set_done(unreviewed.id, True)
    assert [path.name for path, _ in training_records(tmp_path / "db.sqlite")] == ["b.jpg", "c.png"]


def test_the_database_refuses_foreign_or_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        list(training_records(tmp_path / "missing.sqlite"))
    foreign = tmp_path / "foreign.sqlite"
    foreign.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ValueError, match="not a segany annotation database"):
        AnnotationStore(foreign, tmp_path)
    newer = tmp_path / "newer.sqlite"
    with sqlite3.connect(newer) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(ValueError, match="newer segany"):
        AnnotationStore(newer, tmp_path)
    with pytest.raises(IsADirectoryError):
        AnnotationStore(tmp_path, tmp_path)


def _add_from_process(db_path: str, image_id: int, count: int, offset: int) -> list[int]:
    store = AnnotationStore(db_path)
    image = store.image(image_id)
    ids = []
    for index in range(count):
        mask = np.zeros((image.height, image.width), bool)
        mask[index % image.height, (offset + index) % image.width] = True
        ids.append(store.add_object(image_id, encode_rle(mask), label=f"p{offset}-{index}").id)
    return ids


def test_two_processes_writing_at_once_lose_nothing(tmp_path, store):
    image = store.image_by_path("a.png")
    with ProcessPoolExecutor(2) as pool:
        results = list(pool.map(_add_from_process, [str(tmp_path / "db.sqlite")] * 2, [image.id] * 2, [20, 20], [0, 40]))
    stored = store.objects(image.id)
    assert sorted(record.id for record in stored) == sorted(results[0] + results[1])
    assert len({record.label for record in stored}) == 40
