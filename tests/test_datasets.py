"""One loader for every layout: real benchmark files and tiny synthetic layouts of each kind."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segany.annotations import coco_instances, write_coco_json, write_sa1b_json
from segany.datasets import open_dataset, readable_samples
from segany.masks import encode_rle

DATA = Path(__file__).parent / "eval" / "data"
HEIGHT, WIDTH = 24, 32


def save_png(array: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def image_file(path: Path, rng: np.random.Generator) -> Path:
    return save_png(rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8), path)


def box_mask(top: int, left: int, size: int = 5) -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), bool)
    mask[top : top + size, left : left + size] = True
    return mask


def test_grabcut_layout_reads_objects_and_the_ignored_band():
    dataset = open_dataset(DATA / "GrabCut")
    assert dataset.layout == "data_GT+boundary_GT"
    samples = {sample.id: sample for sample in dataset}
    assert sorted(samples) == ["bool", "teddy"]
    raw = np.asarray(Image.open(DATA / "GrabCut" / "boundary_GT" / "bool.bmp"))
    (mask,) = samples["bool"].masks
    np.testing.assert_array_equal(mask, raw == 255)
    np.testing.assert_array_equal(samples["bool"].ignore, raw == 128)
    assert samples["bool"].ignore.sum() == 1888  # the band counted by hand with np.unique
    assert samples["teddy"].ignore is None  # teddy's ground truth has no band
    image = samples["teddy"].read_image()
    assert image.shape == (*samples["teddy"].masks[0].shape, 3) and image.dtype == np.uint8


def test_coco_mval_layout_reads_one_object_per_image():
    dataset = open_dataset(DATA / "COCO_MVal")
    assert [sample.id for sample in dataset] == ["bird04_000000098261", "hair drier06_000000315219"]
    for sample, image in readable_samples(dataset):
        (mask,) = sample.masks
        raw = np.asarray(Image.open(DATA / "COCO_MVal" / "gt" / f"{sample.id}.png"))
        np.testing.assert_array_equal(mask, raw != 0)
        assert mask.shape == image.shape[:2] and 0 < mask.sum() < mask.size and sample.ignore is None


def test_numbered_object_masks_belong_to_their_image_in_number_order(tmp_path, rng, caplog):
    image_file(tmp_path / "img" / "a.jpg", rng)
    image_file(tmp_path / "img" / "a_1.jpg", rng)  # an image whose own name looks numbered
    image_file(tmp_path / "img" / "lonely.png", rng)
    masks = {10: box_mask(10, 10), 2: box_mask(0, 0)}  # numbers sort as numbers: 2 before 10
    for number, mask in masks.items():
        save_png(mask.astype(np.uint8) * 255, tmp_path / "gt" / f"a_{number}.png")
    save_png(box_mask(3, 3).astype(np.uint8), tmp_path / "gt" / "a_1.png")  # a_1.jpg's own mask, not a's
    save_png(box_mask(3, 3).astype(np.uint8), tmp_path / "gt" / "stray.png")
    with caplog.at_level(logging.WARNING, logger="segany.datasets"):
        dataset = open_dataset(tmp_path)
    assert [sample.id for sample in dataset] == ["a", "a_1"]
    first, second = dataset
    assert len(first.masks) == 2
    for got, number in zip(first.masks, (2, 10)):
        np.testing.assert_array_equal(got, masks[number])
    np.testing.assert_array_equal(second.masks[0], box_mask(3, 3))
    assert "stray.png" in caplog.text and "lonely" in caplog.text


def test_instance_id_pngs_give_one_object_per_id_and_voc_void_is_ignored(tmp_path, rng):
    ids = np.zeros((HEIGHT, WIDTH), np.uint8)
    ids[box_mask(0, 0)] = 3
    ids[box_mask(10, 10)] = 1
    ids[0, :] = 255
    image_file(tmp_path / "JPEGImages" / "x.jpg", rng)
    save_png(ids, tmp_path / "SegmentationObject" / "x.png")
    (sample,) = open_dataset(tmp_path)
    assert len(sample.masks) == 2
    np.testing.assert_array_equal(sample.masks[0], ids == 1)
    np.testing.assert_array_equal(sample.masks[1], ids == 3)
    np.testing.assert_array_equal(sample.ignore, ids == 255)

    colour = tmp_path / "colour"
    image_file(colour / "images" / "y.png", rng)
    rgb = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    rgb[box_mask(0, 0)] = (255, 0, 0)
    rgb[box_mask(10, 10)] = (0, 0, 255)
    save_png(rgb, colour / "instances" / "y.png")
    (sample,) = open_dataset(colour)
    assert sorted(int(mask.sum()) for mask in sample.masks) == [25, 25] and sample.ignore is None


def test_coco_json_finds_images_skips_missing_ones_and_ignores_crowds(tmp_path, rng, caplog):
    image_file(tmp_path / "images" / "one.jpg", rng)
    crowd = box_mask(15, 20)
    coco = coco_instances(
        [{"width": WIDTH, "height": HEIGHT, "file_name": name} for name in ("one.jpg", "gone.jpg")],
        [[{"segmentation": encode_rle(box_mask(0, 0))}, {"segmentation": encode_rle(crowd), "iscrowd": 1}],
         [{"segmentation": encode_rle(box_mask(1, 1))}]],
    )
    write_coco_json(tmp_path / "annotations" / "instances.json", coco)
    with caplog.at_level(logging.WARNING, logger="segany.datasets"):
        dataset = open_dataset(tmp_path / "annotations" / "instances.json", images_dir=tmp_path / "images")
    assert "gone.jpg" in caplog.text
    (sample,) = dataset
    assert dataset.layout == "coco" and sample.id == 1
    assert len(sample.masks) == 1
    np.testing.assert_array_equal(sample.masks[0], box_mask(0, 0))
    np.testing.assert_array_equal(sample.ignore, crowd)
    # Without images_dir, an images/ folder beside the JSON is searched.
    write_coco_json(tmp_path / "beside.json", coco)
    assert len(open_dataset(tmp_path / "beside.json")) == 1


def test_sa1b_folder_with_images_beside_or_named_by_file_name(tmp_path, rng):
    beside = tmp_path / "sa1b"
    image_file(beside / "sa_1.jpg", rng)
    info = {"image_id": 1, "width": WIDTH, "height": HEIGHT, "file_name": "sa_1.jpg"}
    write_sa1b_json(beside / "sa_1.json", info, [{"segmentation": encode_rle(box_mask(2, 2))}])
    (sample,) = open_dataset(beside)
    assert sample.id == "sa_1" and sample.image_path == beside / "sa_1.jpg"
    np.testing.assert_array_equal(sample.masks[0], box_mask(2, 2))

    # `segany auto` output: JSONs in one folder, images elsewhere, plus a settings JSON.
    out, photos = tmp_path / "out", tmp_path / "photos"
    image_file(photos / "sub" / "b.png", rng)
    info = {"image_id": 1, "width": WIDTH, "height": HEIGHT, "file_name": "sub/b.png"}
    write_sa1b_json(out / "sub" / "b.json", info, [{"segmentation": encode_rle(box_mask(4, 4))}] * 2)
    (out / "segany-auto.json").write_text(json.dumps({"points_per_side": 4}))
    dataset = open_dataset(out, images_dir=photos)
    assert [sample.id for sample in dataset] == ["sub/b"] and len(dataset[0].masks) == 2


def test_annotation_database_yields_accepted_objects(tmp_path, rng):
    from segany.engine.store import AnnotationStore

    image_file(tmp_path / "pics" / "p.png", rng)
    store = AnnotationStore(tmp_path / "db.sqlite", tmp_path / "pics")
    assert store.add_images([tmp_path / "pics" / "p.png"]) == []
    (image,) = store.images()
    store.add_object(image.id, encode_rle(box_mask(6, 6)))
    (sample,) = open_dataset(tmp_path / "db.sqlite")
    assert sample.image_path.resolve() == (tmp_path / "pics" / "p.png").resolve()
    np.testing.assert_array_equal(sample.masks[0], box_mask(6, 6))


def test_corrupt_files_are_reported_and_skipped(tmp_path, rng, caplog):
    for name in ("good", "bad_image", "bad_mask", "wrong_size"):
        image_file(tmp_path / "img" / f"{name}.png", rng)
        save_png(box_mask(1, 1).astype(np.uint8) * 255, tmp_path / "gt" / f"{name}.png")
    (tmp_path / "img" / "bad_image.png").write_bytes(b"not a png")
    (tmp_path / "gt" / "bad_mask.png").write_bytes(b"\x89PNG broken")
    save_png(np.zeros((5, 5), np.uint8), tmp_path / "gt" / "wrong_size.png")
    dataset = open_dataset(tmp_path)
    assert len(dataset) == 4  # nothing is read when the dataset opens
    with caplog.at_level(logging.WARNING, logger="segany.datasets"):
        kept = [sample.id for sample, _ in readable_samples(dataset)]
    assert kept == ["good"]
    for name in ("bad_image.png", "bad_mask.png", "wrong_size.png"):
        assert name in caplog.text


def test_datasets_pickle_for_data_loader_workers(tmp_path):
    dataset = pickle.loads(pickle.dumps(open_dataset(DATA / "GrabCut")))
    assert len(dataset) == 2 and dataset[1:][0].id == "teddy" and dataset[0].masks[0].any()


def test_unknown_layouts_and_missing_paths_are_named_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        open_dataset(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="cannot tell the dataset layout") as error:
        open_dataset(tmp_path)
    assert "img/ + gt/" in str(error.value)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="notes.txt"):
        open_dataset(tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError, match="images folder"):
        open_dataset(DATA / "GrabCut", images_dir=tmp_path / "absent")
