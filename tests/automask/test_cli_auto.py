"""``segany auto``: outputs, round trips, previews, resuming after a crash, bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import segany
from auto_flags import FAST_FLAGS
from segany.annotations import read_coco_json, read_sa1b_json
from segany.automask import SamAutomaticMaskGenerator
from segany.cli import main
from segany.cli.auto import output_names, relative_names
from segany.io import read_image
from segany.masks import decode_rle

IMAGES = ["dog.jpg", "more/dog-crop.jpg", "truck.png"]
JSONS = ["dog.json", "more/dog-crop.json", "truck.json"]


def auto(*args) -> int:
    return main(["auto", *map(str, args)])


def expected_records(checkpoint: Path, image_path: Path) -> list[dict]:
    """What the generator itself gives for the fast settings."""
    generator = SamAutomaticMaskGenerator(
        segany.build_sam("auto", checkpoint), points_per_side=4, pred_iou_thresh=0, stability_score_thresh=0,
        box_nms_thresh=0.9, output_mode="coco_rle",
    )
    return generator.generate(read_image(image_path))


def test_sa1b_layout_holds_the_generators_records(tmp_path, tiny_checkpoint, photo_collection):
    out = tmp_path / "out"
    assert auto(photo_collection, "--out", out, "--checkpoint", tiny_checkpoint, *FAST_FLAGS) == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.json") if p.name != "segany-auto.json")
    assert written == sorted(JSONS)
    for image_name, json_name in zip(IMAGES, JSONS):
        info, annotations = read_sa1b_json(out / json_name)
        image = read_image(photo_collection / image_name)
        assert (info["width"], info["height"]) == (image.shape[1], image.shape[0])
        assert info["file_name"] == image_name
        expected = expected_records(tiny_checkpoint, photo_collection / image_name)
        assert len(annotations) == len(expected) > 0
        for annotation, record in zip(annotations, expected):
            for key in ("bbox", "area", "point_coords", "crop_box"):
                assert annotation[key] == record[key]
            assert annotation["predicted_iou"] == pytest.approx(record["predicted_iou"], abs=1e-6)
            assert annotation["stability_score"] == pytest.approx(record["stability_score"], abs=1e-6)
            mask = decode_rle(annotation["segmentation"])
            np.testing.assert_array_equal(mask, decode_rle(record["segmentation"]))
            assert mask.shape == image.shape[:2] and mask.sum() == annotation["area"]
    image_ids = [read_sa1b_json(out / name)[0]["image_id"] for name in JSONS]
    assert len(set(image_ids)) == 3


def test_coco_format_round_trips_to_the_same_masks(tmp_path, tiny_checkpoint, photo_collection):
    sa1b, coco = tmp_path / "sa1b", tmp_path / "coco"
    assert auto(photo_collection, "--out", sa1b, "--checkpoint", tiny_checkpoint, *FAST_FLAGS) == 0
    assert auto(photo_collection, "--out", coco, "--format", "coco", "--checkpoint", tiny_checkpoint, *FAST_FLAGS) == 0
    dataset = read_coco_json(coco / "instances.json")
    assert len(dataset) == 3
    by_name = {info["file_name"]: annotations for info, annotations in dataset.values()}
    assert sorted(by_name) == sorted(IMAGES)
    for image_name, json_name in zip(IMAGES, JSONS):
        _, per_image = read_sa1b_json(sa1b / json_name)
        assert len(by_name[image_name]) == len(per_image)
        for from_coco, from_sa1b in zip(by_name[image_name], per_image):
            np.testing.assert_array_equal(decode_rle(from_coco["segmentation"]), decode_rle(from_sa1b["segmentation"]))
            assert from_coco["bbox"] == from_sa1b["bbox"] and from_coco["area"] == from_sa1b["area"]


def test_previews_are_overlays_of_each_image(tmp_path, tiny_checkpoint, photo_collection):
    out = tmp_path / "out"
    args = [photo_collection / "dog.jpg", "--out", out, "--checkpoint", tiny_checkpoint, "--preview", *FAST_FLAGS]
    assert auto(*args) == 0
    preview = np.array(Image.open(out / "previews" / "dog.png"))
    image = read_image(photo_collection / "dog.jpg")
    assert preview.shape == image.shape
    assert not np.array_equal(preview, image), "the preview should show the masks"


def test_rerun_skips_finished_images(tmp_path, tiny_checkpoint, photo_collection, capsys):
    out = tmp_path / "out"
    args = [photo_collection, "--out", out, "--checkpoint", tiny_checkpoint, *FAST_FLAGS]
    assert auto(*args) == 0
    stamps = {name: (out / name).stat().st_mtime_ns for name in JSONS}
    (out / "truck.json").unlink()
    capsys.readouterr()
    assert auto(*args) == 0
    assert "skipping 2 finished images" in capsys.readouterr().err
    assert (out / "truck.json").exists()
    for name in ("dog.json", "more/dog-crop.json"):
        assert (out / name).stat().st_mtime_ns == stamps[name], f"{name} was recomputed"


COPIES = 24


def test_killed_run_resumes_without_losing_or_redoing_images(tmp_path, tiny_checkpoint, photo_collection):
    """kill -9 mid-run, re-run with the same arguments: the result equals an uninterrupted run."""
    many = tmp_path / "many"
    many.mkdir()
    for copy in range(COPIES):
        shutil.copy(photo_collection / "dog.jpg", many / f"{copy:02d}.jpg")
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    command = [sys.executable, "-m", "segany", "auto", str(many), "--checkpoint", str(tiny_checkpoint), *FAST_FLAGS]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([*command, "--out", str(reference)], check=True, env=env, capture_output=True)

    process = subprocess.Popen(
        [*command, "--out", str(resumed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while len(list(resumed.glob("*.json"))) < 3 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished_before = {p.name: p.stat().st_mtime_ns for p in resumed.glob("[0-9]*.json")}
    (resumed / ".07.json.abc123.part").write_text('{"half": ')  # as if killed mid-write
    assert 0 < len(finished_before) < COPIES, "the run should have been killed part-way"

    rerun = subprocess.run([*command, "--out", str(resumed)], env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert f"skipping {len(finished_before)} finished images" in rerun.stderr
    for name, stamp in finished_before.items():
        assert (resumed / name).stat().st_mtime_ns == stamp
    names = sorted(p.name for p in reference.glob("[0-9]*.json"))
    assert sorted(p.name for p in resumed.glob("[0-9]*.json")) == names and len(names) == COPIES
    for name in names:
        assert json.loads((resumed / name).read_text()) == json.loads((reference / name).read_text())
    assert not list(resumed.rglob("*.part")), "a killed run's temporary file was left behind"


def test_unreadable_images_are_reported_skipped_and_fail_the_run(tmp_path, tiny_checkpoint, photo_collection, capsys):
    collection = tmp_path / "photos"
    shutil.copytree(photo_collection, collection)
    (collection / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    out = tmp_path / "out"
    assert auto(collection, "--out", out, "--checkpoint", tiny_checkpoint, *FAST_FLAGS) == 1
    err = capsys.readouterr().err
    assert "1 images could not be read" in err and "broken.jpg" in err
    assert not (out / "broken.json").exists()
    assert all((out / name).exists() for name in JSONS)


def test_changed_settings_are_refused_on_resume(tmp_path, tiny_checkpoint, photo_collection, capsys):
    out = tmp_path / "out"
    assert auto(photo_collection / "dog.jpg", "--out", out, "--checkpoint", tiny_checkpoint, *FAST_FLAGS) == 0
    capsys.readouterr()
    changed = [flag if flag != "4" else "5" for flag in FAST_FLAGS]
    assert auto(photo_collection / "dog.jpg", "--out", out, "--checkpoint", tiny_checkpoint, *changed) == 2
    err = capsys.readouterr().err
    assert "points_per_side" in err and "other settings" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.jpg", "--out", "{tmp}/out"], "not found"),
        (["{photos}", "--out", "{tmp}/file.txt"], "must be a folder"),
        (["{empty}", "--out", "{tmp}/out"], "no images found"),
        (["{photos}", "--out", "{tmp}/out", "--points-per-side", "0"], "points_per_side"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, tiny_checkpoint, photo_collection, capsys, args, message):
    (tmp_path / "file.txt").write_text("not a folder")
    (tmp_path / "empty").mkdir()
    filled = [a.format(tmp=tmp_path, photos=photo_collection, empty=tmp_path / "empty") for a in args]
    assert auto(*filled, "--checkpoint", tiny_checkpoint) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir()), "output left behind"


def test_without_checkpoint_uses_the_embedded_model_or_says_what_to_pass(tmp_path, photo_collection, capsys):
    try:
        segany.build_sam("default")
        embedded = True
    except ValueError:
        embedded = False
    code = auto(photo_collection / "dog.jpg", "--out", tmp_path / "out", *FAST_FLAGS)
    if embedded:
        assert code == 0 and (tmp_path / "out" / "dog.json").exists()
    else:
        assert code == 2 and "checkpoint" in capsys.readouterr().err


def test_output_names_are_unique_and_relative():
    root = Path("/data")
    images = [root / "a" / "x.jpg", root / "b" / "x.jpg", root / "b" / "y.jpg", root / "b" / "y.png"]
    assert output_names(images) == {
        images[0]: "a/x", images[1]: "b/x", images[2]: "b/y.jpg", images[3]: "b/y.png",
    }
    assert output_names([root / "only.jpg"]) == {root / "only.jpg": "only"}
    assert relative_names(images)[images[3]] == "b/y.png"
