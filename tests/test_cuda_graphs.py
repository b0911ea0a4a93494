"""A predictor's prompts replayed as CUDA graphs (segany.speed.cuda_graphs) give what the eager
path gives, follow new prompt values, and are dropped with the image or weights they read.

The graph tests need a GPU (CI has none; run them on one with ``pytest tests/test_cuda_graphs.py``);
the CPU tests check what the capture needs of the shared code.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import segany
from oracle import PROMPTS, blocky_image, build_model_pair
from segany.modeling.transformer import take_tokens

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def shifted(prompt: dict, step: int) -> dict:
    """The prompt moved by ``step`` pixels: same kind and shapes, other values."""
    moved = dict(prompt)
    for key in ("point_coords", "box"):
        if key in moved:
            moved[key] = moved[key] + 3.0 * step
    return moved


@pytest.fixture(scope="module")
def gpu_predictors():
    """(graphed, eager) predictors of one model on one image, TF32 off."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    _, model = build_model_pair(seed=0)
    model = model.to("cuda")
    graphed, eager = segany.SamPredictor(model), segany.SamPredictor(model, cuda_graphs=False)
    image = blocky_image()
    graphed.set_image(image)
    eager.set_image(image)
    yield graphed, eager
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def assert_same(expected, actual) -> None:
    """Same masks, scores and logits: the replay runs the eager path's kernels on the same values."""
    for want, got in zip(expected, actual, strict=True):
        assert want.shape == got.shape and want.dtype == got.dtype
        if want.dtype == np.bool_:
            assert (want != got).sum() <= 2
        else:
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


@needs_gpu
@pytest.mark.parametrize("prompt", list(PROMPTS))
@pytest.mark.parametrize("multimask_output", [True, False])
@pytest.mark.parametrize("return_logits", [False, True])
def test_replayed_prompts_match_eager(gpu_predictors, prompt, multimask_output, return_logits):
    graphed, eager = gpu_predictors
    with warnings.catch_warnings():
        # A failed capture warns and falls back to eager, which these comparisons would not see.
        warnings.filterwarnings("error", message="CUDA graph capture failed")
        for step in range(4):  # eager, captured, replayed, replayed with other values
            kwargs = dict(shifted(PROMPTS[prompt], step), multimask_output=multimask_output, return_logits=return_logits)
            assert_same(eager.predict(**kwargs), graphed.predict(**kwargs))
    captured = graphed._graphs._graphs
    assert captured and all(graph is not None for graph in captured.values())


@needs_gpu
def test_mask_input_follow_up_is_replayed(gpu_predictors):
    graphed, eager = gpu_predictors
    kwargs = dict(PROMPTS["one point"], multimask_output=False)
    low_res = eager.predict(**kwargs)[2]
    for step in range(3):
        follow_up = dict(shifted(PROMPTS["one point"], step), mask_input=low_res + step, multimask_output=False)
        assert_same(eager.predict(**follow_up), graphed.predict(**follow_up))


@needs_gpu
def test_batched_boxes_are_replayed(gpu_predictors):
    graphed, eager = gpu_predictors
    boxes = torch.tensor([[10.0, 20.0, 120.0, 90.0], [50.0, 40.0, 200.0, 150.0], [0.0, 0.0, 60.0, 60.0]], device="cuda")
    boxes = graphed.transform.apply_boxes_torch(boxes, graphed.original_size)
    for step in range(3):
        expected = eager.predict_torch(None, None, boxes + step, multimask_output=True)
        actual = graphed.predict_torch(None, None, boxes + step, multimask_output=True)
        assert_same([t.cpu().numpy() for t in expected], [t.cpu().numpy() for t in actual])


def replayed(predictor: segany.SamPredictor, kwargs: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The predictor's answer to ``kwargs`` once that kind of prompt has a graph (its third ask)."""
    for _ in range(2):
        predictor.predict(**kwargs)
    assert predictor._graphs._graphs
    return predictor.predict(**kwargs)


@needs_gpu
def test_new_image_drops_the_graphs(gpu_predictors):
    graphed, eager = gpu_predictors
    kwargs = dict(PROMPTS["points and box"], multimask_output=True)
    replayed(graphed, kwargs)
    flipped = np.ascontiguousarray(blocky_image()[::-1])
    try:
        for predictor in (graphed, eager):
            predictor.set_image(flipped)
        for step in range(3):
            moved = shifted(kwargs, step)
            assert_same(eager.predict(**moved), graphed.predict(**moved))
    finally:
        for predictor in (graphed, eager):
            predictor.set_image(blocky_image())


@needs_gpu
def test_replaced_weights_drop_the_graphs(gpu_predictors):
    graphed, eager = gpu_predictors
    kwargs = dict(PROMPTS["one point"], multimask_output=True)
    before = replayed(graphed, kwargs)
    head = graphed.model.mask_decoder.iou_prediction_head.layers[-1]
    original = head.bias
    head.bias = torch.nn.Parameter(original.detach() + 0.25)  # new storage: a graph would read the old one
    try:
        expected, actual = eager.predict(**kwargs), graphed.predict(**kwargs)
        assert_same(expected, actual)
        assert not np.allclose(actual[1], before[1])  # the new weight was read
    finally:
        head.bias = original


def test_take_tokens_matches_indexing():
    tokens = torch.randn(2, 7, 5)
    for indices in ([0], [1, 2, 3], [0, 2, 3, 4], [0, 1, 2, 3, 4, 5, 6], [0, 3, 5, 6]):
        assert torch.equal(take_tokens(tokens, indices), tokens[:, indices])


def test_cpu_predictor_captures_nothing():
    _, model = build_model_pair(seed=0)
    predictor = segany.SamPredictor(model)
    predictor.set_image(blocky_image())
    for step in range(3):
        predictor.predict(**shifted(PROMPTS["one point"], step))
    assert not predictor._graphs._graphs


class FakeCapture:
    """Stands in for a captured graph on the CPU: counts its replays."""

    def __init__(self) -> None:
        self.replays = 0

    def replay(self, inputs) -> tuple:
        self.replays += 1
        return ("replayed",)


def test_graph_cache_captures_second_ask_and_drops_on_new_state(monkeypatch):
    from segany.speed.cuda_graphs import PromptGraphs

    graphs = PromptGraphs(capacity=2)
    captures = []
    monkeypatch.setattr(graphs, "_capture", lambda run, inputs: captures.append(FakeCapture()) or captures[-1])
    eager = lambda *inputs: ("eager",)  # noqa: E731
    point = (torch.zeros(1, 1, 2), None)
    assert graphs.run("kind", 0, eager, point) == ("eager",)  # first ask: eager, no capture
    assert not captures
    assert graphs.run("kind", 0, eager, point) == ("replayed",)  # second: captured and replayed
    assert graphs.run("kind", 0, eager, point) == ("replayed",) and len(captures) == 1
    assert graphs.run("kind", 1, eager, point) == ("eager",)  # new image or weights: all dropped
    other_shapes = [(torch.zeros(1, n, 2), None) for n in (2, 3)]
    for inputs in other_shapes:  # two more kinds fill the capacity of 2, evicting the oldest
        graphs.run("kind", 1, eager, inputs)
        graphs.run("kind", 1, eager, inputs)
    graphs.run("kind", 1, eager, point)
    graphs.run("kind", 1, eager, point)
    kept = [signature[0][0] for _, signature in graphs._graphs]  # the point inputs' shapes, oldest first
    assert kept == [(1, 3, 2), (1, 1, 2)] and len(captures) == 4


def test_failed_capture_keeps_that_kind_eager(monkeypatch):
    from segany.speed.cuda_graphs import PromptGraphs

    graphs = PromptGraphs()
    monkeypatch.setattr(graphs, "_capture", lambda run, inputs: None)
    eager = lambda *inputs: ("eager",)  # noqa: E731
    point = (torch.zeros(1, 1, 2),)
    assert [graphs.run("kind", 0, eager, point) for _ in range(3)] == [("eager",)] * 3
