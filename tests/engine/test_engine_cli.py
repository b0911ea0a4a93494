"""``segany serve`` and ``segany annotations`` from the command line: errors are one line and exit 2."""

from __future__ import annotations

import pytest

from segany.cli import main


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--port", "70000"], "--port must be between"),
        (["--prefetch", "-1"], "--prefetch"),
        (["--max-request-mb", "0"], "--max-request-mb"),
        (["--token", "short", "--host", "0.0.0.0"], "at least 16"),
    ],
)
def test_serve_refuses_bad_options(images_dir, tiny_checkpoint, tmp_path, capsys, extra, message):
    code = main(["serve", str(images_dir), "--db", str(tmp_path / "db.sqlite"), "--checkpoint", str(tiny_checkpoint), *extra])
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and message in error
    assert not (tmp_path / "db.sqlite").exists()


def test_serve_refuses_missing_inputs(tmp_path, images_dir, tiny_checkpoint, capsys):
    assert main(["serve", str(tmp_path / "nowhere"), "--db", str(tmp_path / "db.sqlite"),
                 "--checkpoint", str(tiny_checkpoint)]) == 2
    assert "images folder not found" in capsys.readouterr().err
    assert main(["serve", str(images_dir), "--db", str(tmp_path / "db.sqlite"),
                 "--checkpoint", str(tmp_path / "missing.pth")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["serve", str(empty), "--db", str(tmp_path / "db.sqlite"), "--checkpoint", str(tiny_checkpoint)]) == 2
    assert "no images found" in capsys.readouterr().err
    assert not (tmp_path / "db.sqlite").exists()


def _annotate(tmp_path, images_dir):
    """A database with two objects on a.png (one labelled) and one on sub/c.png."""
    import numpy as np

    from segany.engine.store import AnnotationStore
    from segany.io import list_images
    from segany.masks import encode_rle

    store = AnnotationStore(tmp_path / "db.sqlite", images_dir)
    store.add_images(list_images([images_dir]))
    masks = {}
    for path, label, box in [("a.png", "dog", (5, 5, 20, 30)), ("a.png", "", (40, 10, 60, 50)), ("sub/c.png", "cat", (0, 0, 10, 10))]:
        image = store.image_by_path(path)
        mask = np.zeros((image.height, image.width), bool)
        mask[box[1]:box[3], box[0]:box[2]] = True
        store.add_object(image.id, encode_rle(mask), label=label, seconds=2.0)
        masks[(path, label)] = mask
    return store, masks


def test_export_coco_is_read_by_pycocotools(tmp_path, images_dir, capsys):
    import numpy as np
    from pycocotools.coco import COCO

    _, masks = _annotate(tmp_path, images_dir)
    out = tmp_path / "out" / "coco.json"
    assert main(["annotations", "export", "--db", str(tmp_path / "db.sqlite"), "--format", "coco", "--out", str(out)]) == 0
    coco = COCO(str(out))
    assert sorted(category["name"] for category in coco.loadCats(coco.getCatIds())) == ["cat", "dog", "object"]
    found = {}
    for annotation in coco.loadAnns(coco.getAnnIds()):
        name = coco.loadImgs(annotation["image_id"])[0]["file_name"]
        label = coco.loadCats(annotation["category_id"])[0]["name"]
        found[(name, "" if label == "object" else label)] = coco.annToMask(annotation).astype(bool)
        assert annotation["source"] == "manual" and annotation["seconds"] == 2.0
    assert found.keys() == masks.keys()
    assert all(np.array_equal(found[key], masks[key]) for key in masks)


def test_sa1b_export_then_import_into_a_new_database_round_trips(tmp_path, images_dir, capsys):
    import numpy as np

    from segany.engine.store import AnnotationStore
    from segany.masks import decode_rle

    _annotate(tmp_path, images_dir)
    folder = tmp_path / "sa1b"
    assert main(["annotations", "export", "--db", str(tmp_path / "db.sqlite"), "--format", "sa1b", "--out", str(folder)]) == 0
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.json")) == ["a.json", "sub/c.json"]

    fresh = tmp_path / "fresh.sqlite"
    args = ["annotations", "import", str(folder), "--format", "sa1b", "--db", str(fresh), "--images-dir", str(images_dir)]
    assert main(args) == 0
    assert "added 3 objects" in capsys.readouterr().out
    assert main(args) == 0  # again: nothing is duplicated
    assert "added 0 objects, skipped 3" in capsys.readouterr().out
    original, copy = AnnotationStore(tmp_path / "db.sqlite"), AnnotationStore(fresh)
    for image in original.images():
        before = [(decode_rle(o.rle), o.label) for o in original.objects(image.id)]
        after = [(decode_rle(o.rle), o.label, o.source) for o in copy.objects(copy.image_by_path(image.path).id)]
        assert len(before) == len(after)
        for (mask, label), (mask2, label2, source) in zip(before, after):
            assert np.array_equal(mask, mask2) and label == label2 and source == "prefilled"


def test_coco_import_takes_polygons_and_reports_unknown_images(tmp_path, images_dir, capsys):
    import json

    from segany.engine.store import AnnotationStore

    document = {
        "images": [{"id": 7, "file_name": "b.jpg", "width": 48, "height": 72},
                   {"id": 8, "file_name": "elsewhere.jpg", "width": 10, "height": 10}],
        "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "segmentation": [[2, 2, 20, 2, 20, 30, 2, 30]]},
                        {"id": 2, "image_id": 8, "category_id": 3, "segmentation": [[1, 1, 5, 1, 5, 5]]}],
        "categories": [{"id": 3, "name": "person"}],
    }
    path = tmp_path / "in.json"
    path.write_text(json.dumps(document))
    assert main(["annotations", "import", str(path), "--db", str(tmp_path / "db.sqlite"), "--images-dir", str(images_dir)]) == 0
    assert "added 1 objects" in (out := capsys.readouterr().out) and "elsewhere.jpg" in out
    store = AnnotationStore(tmp_path / "db.sqlite")
    (obj,) = store.objects(store.image_by_path("b.jpg").id)
    assert (obj.label, obj.source, obj.bbox[:2]) == ("person", "manual", [2.0, 2.0]) and 500 < obj.area < 600


@pytest.mark.parametrize(
    "content, message",
    [("{not json", "not valid JSON"), ('{"annotations": []}', "not a COCO instances file"),
     ('{"images": [], "annotations": [{"image_id": 1}]}', "unknown image_id"),
     ('{"images": [{"id": 1, "width": 4, "height": 4}], "annotations": []}', "no 'file_name'"),
     ('{"images": [{"id": 1, "file_name": "a.png", "width": 80, "height": 60}], '
      '"annotations": [{"image_id": 1, "segmentation": {"size": [60, 80], "counts": "@@"}}]}', "malformed")],
)
def test_import_refuses_bad_files_in_one_line(tmp_path, images_dir, capsys, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    assert main(["annotations", "import", str(path), "--db", str(tmp_path / "db.sqlite"), "--images-dir", str(images_dir)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and message in error


def test_annotations_errors_exit_2(tmp_path, capsys):
    assert main(["annotations", "stats", "--db", str(tmp_path / "missing.sqlite")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["annotations", "import", str(tmp_path / "none.json"), "--db", str(tmp_path / "x.sqlite")]) == 2
    assert "not found" in capsys.readouterr().err
    assert not (tmp_path / "x.sqlite").exists()


def test_prefill_command_resumes(tmp_path, images_dir, tiny_checkpoint, monkeypatch, capsys):
    import json

    from segany.engine import prefill

    monkeypatch.setattr(prefill, "PREFILL_OPTIONS", {"pred_iou_thresh": -100.0, "stability_score_thresh": 0.0,
                                                     "points_per_side": 2})
    _annotate(tmp_path, images_dir)
    command = ["annotations", "prefill", "--db", str(tmp_path / "db.sqlite"), "--checkpoint", str(tiny_checkpoint)]
    assert main(command) == 0
    assert "prefilled 3 image(s)" in capsys.readouterr().out
    assert main(command) == 0
    assert "prefilled 0 image(s)" in capsys.readouterr().out  # all done already
    assert main(["annotations", "stats", "--db", str(tmp_path / "db.sqlite")]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["prefilled"] == 3 and stats["objects_by_source"]["manual"] == 3
