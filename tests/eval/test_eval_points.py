"""The point protocols on segmenters whose answers are known, on SAM against the official package, and from the CLI."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from eval_doubles import DATA, EmptySegmenter, PerfectSegmenter, shapes_image

from segany.cli import main
from segany.datasets import open_dataset
from segany.eval import points
from segany.eval.records import evaluate_dataset, record_log
from segany.eval.segmenters import GrabCutSegmenter, Prediction, SamSegmenter


def run_protocol(segmenter, dataset, tmp_path, clicks=20):
    log = record_log(tmp_path, "points", segmenter.name, {"clicks": clicks})
    records = evaluate_dataset(dataset, log, lambda s, image: points.evaluate_image(segmenter, s, image, clicks), "test")
    return records, points.summarize(records, clicks)


def test_perfect_segmenter_scores_one_and_needs_one_click(shapes_dataset, tmp_path):
    root, objects = shapes_dataset
    _, summary = run_protocol(PerfectSegmenter(objects), open_dataset(root), tmp_path)
    assert summary["objects"] == 4 and summary["images"] == 2
    assert summary["miou_single_point"] == summary["miou_single_point_oracle"] == summary["miou_box"] == 1.0
    assert summary["miou_per_click"] == [1.0] * 20
    assert summary["noc85"] == summary["noc90"] == 1.0
    assert summary["failures85"] == summary["failures90"] == 0


def test_empty_segmenter_scores_zero_and_hits_the_cap(shapes_dataset, tmp_path):
    root, _ = shapes_dataset
    _, summary = run_protocol(EmptySegmenter(), open_dataset(root), tmp_path, clicks=5)
    assert summary["miou_single_point"] == summary["miou_single_point_oracle"] == summary["miou_box"] == 0.0
    assert summary["miou_per_click"] == [0.0] * 5
    assert summary["noc85"] == summary["noc90"] == 5.0 and summary["failures90"] == 4


def test_oracle_differs_from_most_confident_and_a_second_click_fixes_it(shapes_dataset, tmp_path):
    root, objects = shapes_dataset
    records, summary = run_protocol(PerfectSegmenter(objects, confident=False), open_dataset(root), tmp_path, 3)
    assert summary["miou_single_point"] == 0.0 and summary["miou_single_point_oracle"] == 1.0
    assert summary["miou_per_click"] == [0.0, 1.0, 1.0]
    assert summary["noc85"] == 2.0
    # The centre clicks, worked out by hand in test_eval_clicks: ellipse (22, 30), rectangle (60, 24).
    assert [obj["point"] for obj in records[0]["objects"]] == [[22, 30], [60, 24]]


def test_feedback_and_all_clicks_reach_the_segmenter(tmp_path):
    """A recording segmenter sees every click so far and the previous answer's feedback."""
    image, (ellipse, _) = shapes_image(np.random.default_rng(0))
    calls = []

    class Recorder(EmptySegmenter):
        def predict(self, points=None, labels=None, box=None, previous=None, multimask=False):
            calls.append((None if points is None else points.tolist(), None if labels is None else labels.tolist(),
                          None if previous is None else float(previous.flat[0]), multimask))
            count = 3 if multimask else 1
            return Prediction(np.zeros((count, *self.shape), bool), np.arange(count), np.full((count, 1), len(calls)))

    class OneObject:
        masks, ignore = [ellipse], None

    points.evaluate_image(Recorder(), OneObject(), image, clicks=3)
    (p1, l1, prev1, multi1), (p2, l2, prev2, multi2), (p3, l3, prev3, _), box_call = calls
    assert multi1 and not multi2 and prev1 is None
    assert p2[:1] == p1 and len(p2) == 2 and len(p3) == 3 and l3 == [1, 1, 1]
    assert prev2 == 1.0 and prev3 == 2.0  # feedback of the answer before, first call's most confident (index 2)
    assert box_call[0] is None


def test_grabcut_band_is_ignored(tmp_path):
    dataset = open_dataset(DATA / "GrabCut")
    sample = {s.id: s for s in dataset}["bool"]
    target, band = sample.masks[0], sample.ignore

    class BandOnly(EmptySegmenter):
        """Predicts the object plus the whole uncertain band: perfect once the band is ignored."""

        def predict(self, points=None, labels=None, box=None, previous=None, multimask=False):
            count = 3 if multimask else 1
            masks = np.repeat((target | band)[None], count, axis=0)
            return Prediction(masks, np.ones(count), masks)

    record = points.evaluate_image(BandOnly(), sample, sample.read_image(), clicks=2)
    (obj,) = record["objects"]
    assert obj["single_point"] == obj["box"] == 1.0 and obj["area"] == target.sum()


def test_grabcut_baseline_segments_flat_shapes(tmp_path):
    image, masks = shapes_image(np.random.default_rng(1))

    class TwoObjects:
        ignore = None

    TwoObjects.masks = masks
    record = points.evaluate_image(GrabCutSegmenter(), TwoObjects(), image, clicks=2)
    for obj in record["objects"]:
        assert obj["box"] > 0.8 and max(obj["clicks"]) > 0.8


def test_grabcut_baseline_repeats_exactly_whatever_opencv_drew_before():
    sample = open_dataset(DATA / "GrabCut")[0]
    segmenter = GrabCutSegmenter()
    segmenter.set_image(sample.read_image())
    scored = sample.masks[0] if sample.ignore is None else sample.masks[0] & ~sample.ignore
    inside = np.argwhere(scored)
    point = inside[len(inside) // 2][::-1][None].astype(float)
    answers = []
    for draws in (0, 7, 1000):
        cv2.randu(np.empty(draws + 1, np.float32), 0, 1)  # moves OpenCV's random generator along
        answers.append(segmenter.predict(point, np.array([1])).masks[0])
        answers.append(segmenter.predict(box=points.tight_box(scored)).masks[0])
    assert all(np.array_equal(answer, answers[index % 2]) for index, answer in enumerate(answers))


class OfficialSegmenter:
    """The official package's predictor behind the same interface: the reference for SamSegmenter."""

    name = "official"

    def __init__(self, model) -> None:
        from segment_anything import SamPredictor

        self.predictor = SamPredictor(model)

    def set_image(self, image):
        self.predictor.set_image(image)

    def predict(self, points=None, labels=None, box=None, previous=None, multimask=False):
        masks, scores, low_res = self.predictor.predict(
            points, labels, box, previous[None] if previous is not None else None, multimask_output=multimask
        )
        return Prediction(masks, scores, low_res)


def test_sam_segmenter_matches_the_official_predictor_and_caches_embeddings(tmp_path):
    pytest.importorskip("segment_anything")
    from oracle import build_model_pair

    from segany.embedding_cache import EmbeddingCache

    reference, ours = build_model_pair(seed=3)
    dataset = open_dataset(DATA / "COCO_MVal")[:1]
    sample = dataset[0]
    image = sample.read_image()
    expected = points.evaluate_image(OfficialSegmenter(reference), sample, image, clicks=3)
    cache = EmbeddingCache(tmp_path / "cache")
    got = points.evaluate_image(SamSegmenter(ours, "ours", cache), sample, image, clicks=3)
    for want, have in zip(expected["objects"], got["objects"], strict=True):
        for key in ("single_point", "single_point_oracle", "box"):
            assert have[key] == pytest.approx(want[key], abs=2e-3)
        np.testing.assert_allclose(have["clicks"], want["clicks"], atol=2e-3)
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 1
    again = SamSegmenter(ours, "ours", cache)
    again.predictor.set_image = None  # a cache hit must not embed again
    assert points.evaluate_image(again, sample, image, clicks=3)["objects"][0]["clicks"] == got["objects"][0]["clicks"]


def test_cli_writes_metrics_report_and_resumes(tmp_path, tiny_checkpoint, capsys):
    out = tmp_path / "out"
    args = ["eval", "points", str(DATA / "GrabCut"), "--out", str(out), "--checkpoint", f"tiny={tiny_checkpoint}",
            "--checkpoint", f"again={tiny_checkpoint}", "--clicks", "3", "--examples", "1", "--limit", "2"]
    assert main(args) == 0
    metrics = json.loads((out / "points.json").read_text())
    assert sorted(metrics["models"]) == ["again", "tiny"]
    tiny = metrics["models"]["tiny"]
    assert tiny["objects"] == 2 and len(tiny["miou_per_click"]) == 3
    assert 0.0 <= tiny["miou_single_point"] <= tiny["miou_single_point_oracle"] <= 1.0
    assert metrics["models"]["again"]["miou_per_click"] == tiny["miou_per_click"]
    report = (out / "points.md").read_text()
    for picture in ("points-clicks.png", "points-examples-tiny.png", "points-examples-again.png"):
        assert picture in report and (out / picture).stat().st_size > 1000
    (log,) = (out / "records" / "points").glob("tiny-*.jsonl")
    lines = log.read_text().splitlines()
    log.write_text(lines[0] + "\n" + lines[1][:20])  # as if killed while writing the second image
    assert main(args) == 0
    assert len(log.read_text().splitlines()) == 2
    assert json.loads((out / "points.json").read_text())["models"]["tiny"] == tiny


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--clicks", "0"], "--clicks must be at least 1"),
        (["--limit", "0"], "--limit must be at least 1"),
        (["--checkpoint", "missing.pth"], "checkpoint not found"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys, extra, message, tiny_checkpoint):
    if "--checkpoint" not in extra:
        extra = extra + ["--checkpoint", str(tiny_checkpoint)]
    assert main(["eval", "points", str(DATA / "GrabCut"), "--out", str(tmp_path / "o"), *extra]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1


def test_cli_rejects_an_unknown_dataset_layout(tmp_path, capsys, tiny_checkpoint):
    assert main(["eval", "points", str(tmp_path), "--out", str(tmp_path / "o"), "--checkpoint", str(tiny_checkpoint)]) == 2
    assert "cannot tell the dataset layout" in capsys.readouterr().err
