"""``segany predict`` end to end on a tiny random model checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import segany
from segany.cli import main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.pth"
    torch.save(segany.build_sam("tiny").state_dict(), path)
    return path


@pytest.fixture
def image_path(tmp_path, rng):
    path = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(path)
    return path


def test_predict_writes_mask_scores_and_overlay(tmp_path, checkpoint, image_path, capsys):
    out = tmp_path / "result" / "mask.png"
    code = main(["predict", str(image_path), "--checkpoint", str(checkpoint), "--point", "10,20",
                 "--point", "40,30,0", "--box", "5,5,60,40", "--multimask", "--out", str(out),
                 "--overlay", str(tmp_path / "overlay.png")])
    assert code == 0
    mask = np.array(Image.open(out))
    assert mask.shape == (48, 64) and set(np.unique(mask)) <= {0, 255}
    report = json.loads(out.with_suffix(".json").read_text())
    assert len(report["scores"]) == 3 and report["score"] == max(report["scores"])
    assert report["area"] == int((mask > 0).sum())
    assert np.array(Image.open(tmp_path / "overlay.png")).shape == (48, 64, 3)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--point", "100,20"], "outside"),
        ([], "no prompt"),
        (["--point", "1,2", "--out-ignored"], None),
    ],
)
def test_predict_errors_are_one_line_and_leave_no_files(tmp_path, checkpoint, image_path, capsys, extra, message):
    out = tmp_path / "mask.png"
    if message is None:
        with pytest.raises(SystemExit):
            main(["predict", str(image_path), "--checkpoint", str(checkpoint), *extra, "--out", str(out)])
    else:
        code = main(["predict", str(image_path), "--checkpoint", str(checkpoint), *extra, "--out", str(out)])
        assert code == 2
        error = capsys.readouterr().err.strip()
        assert message in error and "\n" not in error
    assert list(tmp_path.glob("mask*")) == []


def test_predict_rejects_corrupt_image(tmp_path, checkpoint):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    assert main(["predict", str(broken), "--checkpoint", str(checkpoint), "--point", "1,1",
                 "--out", str(tmp_path / "m.png")]) == 2
    assert not (tmp_path / "m.png").exists()
