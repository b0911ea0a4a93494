"""The BSDS edge protocol on synthetic edge maps whose scores are worked out by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from segany.cli import main
from segany.eval import edges

SHAPE = (300, 400)  # diagonal 500 px: the tolerance is 0.0075 * 500 = 3.75 px


def line(rows, cols) -> np.ndarray:
    mask = np.zeros(SHAPE, bool)
    mask[rows, cols] = True
    return mask


def test_matching_is_one_to_one_within_the_tolerance():
    truth = line(10, slice(5, 15))  # 10 pixels
    detected = line(12, slice(5, 15)) | line(13, slice(5, 15))  # 20 pixels, all within 3 px
    matched_detected, matched_truth = edges.correspond_pixels(detected, truth, 3.0)
    assert matched_truth.sum() == 10 and matched_detected.sum() == 10  # each true pixel used once
    far = line(20, slice(5, 15))
    matched_detected, matched_truth = edges.correspond_pixels(far, truth, 3.0)
    assert matched_detected.sum() == matched_truth.sum() == 0
    # A diagonal offset of (3, 2) is 3.6 px: inside 3.75, outside 3.5.
    truth, detected = line(50, 50), line(53, 52)
    assert edges.correspond_pixels(detected, truth, 3.75)[0].sum() == 1
    assert edges.correspond_pixels(detected, truth, 3.5)[0].sum() == 0


def test_thinning_leaves_a_one_pixel_line_and_keeps_thin_lines():
    bar = np.zeros((20, 40), bool)
    bar[8:11, 5:35] = True
    thinned = edges.thin(bar)
    assert thinned[9, 8:32].all() and thinned[8].sum() + thinned[10].sum() <= 4  # middle row, ends may bend
    assert (thinned.sum(axis=0) <= 1).all()
    single = np.zeros((20, 40), bool)
    single[5, 3:30] = True
    np.testing.assert_array_equal(edges.thin(single), single)


def test_edge_nms_keeps_the_ridge_of_a_soft_edge():
    columns = np.arange(60, dtype=np.float32)
    ridge = np.exp(-((columns - 30) ** 2) / 20)
    soft = np.tile(ridge, (40, 1))
    kept = edges.edge_nms(soft)
    inner = kept[8:32, 8:52]  # away from the faded border
    assert (inner[:, 22] > 0.9).all() and np.count_nonzero(inner[:, :22]) == np.count_nonzero(inner[:, 23:]) == 0


def scene_a() -> tuple[np.ndarray, list[np.ndarray]]:
    """Annotator 1 drew a 200-px line; annotator 2 the same line and a 100-px vertical one."""
    horizontal = line(100, slice(50, 250))
    vertical = line(slice(50, 150), 300)
    strength = np.zeros(SHAPE, np.float32)
    strength[102, 50:250] = 0.8  # the line, 2 px off: matched
    strength[110, 100:150] = 0.6  # 50 px, 10 px off: false
    strength[200, 50:150] = 0.3  # 100 px far away: false
    strength[50:150, 302] = 0.3  # the vertical line, 2 px off: matched (annotator 2 only)
    return strength, [horizontal, horizontal | vertical]


def scene_b() -> tuple[np.ndarray, list[np.ndarray]]:
    """One annotator, one line, found only at low strength, plus 50 false pixels."""
    strength = np.zeros(SHAPE, np.float32)
    strength[100, 50:250] = 0.3
    strength[200, 50:100] = 0.3
    return strength, [line(100, slice(50, 250))]


def test_counts_of_one_image_by_hand():
    levels = edges.thresholds(3)
    np.testing.assert_allclose(levels, [0.25, 0.5, 0.75])
    counts = edges.image_counts(*scene_a(), levels)
    # (matched true, all true, matched detected, all detected) at 0.25, 0.5, 0.75:
    # true pixels: 200 + 300 = 500; at 0.25 all 4 segments (450 px) are on, 300 of them right,
    # matching 200 + 300 true pixels; above, the vertical line is gone (200 + 200 matched true).
    np.testing.assert_array_equal(counts, [[500, 500, 300, 450], [400, 500, 200, 250], [400, 500, 200, 200]])


def test_ods_ois_ap_by_hand():
    levels = edges.thresholds(3)
    a, b = (edges.image_counts(*scene(), levels) for scene in (scene_a, scene_b))
    np.testing.assert_array_equal(b, [[200, 200, 200, 250], [0, 200, 0, 0], [0, 200, 0, 0]])

    def f(r, p):
        return 2 * r * p / (r + p)

    alone = edges.summarize(levels, [a])
    # Image A: R = 1, .8, .8 and P = 300/450, .8, 1: best F at 0.75 (interpolating never beats it).
    assert alone["ods"] == pytest.approx(f(0.8, 1.0)) and alone["ods_threshold"] == pytest.approx(0.75)
    assert alone["ois"] == pytest.approx(f(0.8, 1.0))
    # AP: recall 0.8 (first at 0.5: P = .8) to 1.0 (P = 2/3): 21 samples on a straight line.
    assert alone["ap"] == pytest.approx(21 * (0.8 + 2 / 3) / 2 / 100)

    both = edges.summarize(levels, [a, b])
    # Summed: R = 700/700, 400/700, 400/700 and P = 500/700, 200/250, 200/200; F is best at 0.25.
    assert both["ods"] == pytest.approx(f(1.0, 500 / 700)) and both["ods_threshold"] == pytest.approx(0.25)
    # OIS: A at its best (0.75) plus B at its best (0.25): R = 600/700, P = 400/450.
    assert both["ois"] == pytest.approx(f(600 / 700, 400 / 450))
    assert both["images"] == 2 and len(both["recall"]) == 3


def test_no_detection_and_no_truth_do_not_divide_by_zero():
    levels = edges.thresholds(5)
    nothing = edges.summarize(levels, [edges.image_counts(np.zeros(SHAPE, np.float32), [line(5, slice(0, 9))], levels)])
    assert nothing["ods"] == nothing["ois"] == nothing["ap"] == 0.0
    counts = edges.image_counts(np.ones(SHAPE, np.float32) * 0.9, [], levels)
    assert counts[:, 0].sum() == counts[:, 1].sum() == counts[:, 2].sum() == 0 and counts[:, 3].min() > 0


def test_boundaries_of_object_masks():
    mask = np.zeros((10, 10), bool)
    mask[2:6, 3:8] = True
    boundary = edges.mask_boundaries([mask])
    expected = mask.copy()
    expected[3:5, 4:7] = False
    np.testing.assert_array_equal(boundary, expected)


def test_bsds_ground_truth_files_are_read(tmp_path):
    from scipy.io import savemat

    first, second = np.zeros((6, 8), np.uint8), np.zeros((6, 8), np.uint8)
    first[2, :] = 1
    second[:, 3] = 1
    cells = np.empty((1, 2), dtype=object)
    cells[0, 0] = {"Segmentation": np.ones((6, 8), np.uint16), "Boundaries": first}
    cells[0, 1] = {"Segmentation": np.ones((6, 8), np.uint16), "Boundaries": second}
    (tmp_path / "groundTruth" / "test").mkdir(parents=True)
    (tmp_path / "images" / "test").mkdir(parents=True)
    savemat(tmp_path / "groundTruth" / "test" / "12.mat", {"groundTruth": cells})
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(tmp_path / "images" / "test" / "12.jpg")
    (sample,) = edges.bsds_samples(tmp_path, "test")
    truths = edges.annotator_boundaries(sample)
    np.testing.assert_array_equal(truths[0], first.astype(bool))
    np.testing.assert_array_equal(truths[1], second.astype(bool))
    (tmp_path / "groundTruth" / "test" / "12.mat").write_text("junk")
    with pytest.raises(ValueError, match="12.mat"):
        edges.bsds_samples(tmp_path, "test")[0].masks


def test_sam_edge_maps_and_the_cli(tmp_path, shapes_dataset, capsys):
    import segany

    root, _ = shapes_dataset
    torch.manual_seed(0)
    checkpoint = segany.save_sam(segany.build_sam("tiny"), tmp_path / "tiny.safetensors")
    out = tmp_path / "out"
    args = ["eval", "edges", str(root), "--out", str(out), "--checkpoint", str(checkpoint),
            "--points-per-side", "4", "--thresholds", "5", "--examples", "1"]
    assert main(args) == 0
    metrics = json.loads((out / "edges.json").read_text())["models"]["tiny"]
    assert metrics["images"] == 2 and all(0 <= metrics[key] <= 1 for key in ("ods", "ois", "ap"))
    edge_map = np.asarray(Image.open(out / "edge-maps" / "tiny" / "first.png"))
    assert edge_map.shape == (60, 80) and edge_map.max() == 255
    report = (out / "edges.md").read_text()
    assert "edges-pr.png" in report and (out / "edges-examples-tiny.png").exists()
    assert main(args[:-2] + ["--thresholds", "0"]) == 2
    assert "--thresholds must be at least 1" in capsys.readouterr().err
