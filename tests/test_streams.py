"""Parallel CPU streams: the prompt's work split between threads gives the serial results."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

import segany
from oracle import blocky_image, build_model_pair
from segany.modeling import streams, transformer
from segany.modeling.streams import cpu_streams, in_streams, map_in_streams, split_range, stream_count
from segany.speed.flops import FlopCounter


@pytest.mark.parametrize(("length", "parts", "step"), [(4096, 2, 1), (4096, 3, 64), (10, 4, 3), (5, 8, 1), (1, 3, 1)])
def test_split_range_cuts_the_whole_range_in_order(length, parts, step):
    ranges = split_range(length, parts, step)
    assert [index for part in ranges for index in part] == list(range(length))
    assert 1 <= len(ranges) <= parts and all(len(part) > 0 for part in ranges)
    assert all(part.start % step == 0 for part in ranges)
    sizes = [len(part) for part in ranges[:-1]]
    assert not sizes or max(sizes) - min(sizes) <= step


def test_in_streams_runs_the_tasks_at_once_in_threads_with_the_callers_settings():
    together = threading.Barrier(2, timeout=30)  # each task waits for the other: they run at once

    def task(index):
        def run():
            together.wait()
            state = torch.get_num_threads(), torch.is_inference_mode_enabled(), torch.is_grad_enabled()
            return index, threading.get_ident(), *state

        return run

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        with torch.inference_mode():
            results = in_streams([task(index) for index in range(2)])
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(threads)
    assert [index for index, *_ in results] == [0, 1]
    assert results[0][1] == threading.get_ident() != results[1][1]  # the caller ran the first
    assert all(result[2:] == (3, True, False) for result in results)


def test_cpu_streams_share_the_threads_and_stay_serial_where_threads_cannot_help():
    tensor = torch.zeros(2)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(6)
        with cpu_streams(tensor) as count:
            assert count == streams.MAX_STREAMS == 4
            assert torch.get_num_threads() == 6 // 4
        assert torch.get_num_threads() == 6
        torch.set_num_threads(2)
        with cpu_streams(tensor) as count:
            assert count == 2 and torch.get_num_threads() == 1
        with cpu_streams(tensor, tasks=1) as count:  # one piece of work keeps every thread
            assert count == 1 and torch.get_num_threads() == 2
        assert stream_count(tensor.requires_grad_()) == 1  # autograd
        with FlopCounter():  # sees only its own thread's operations
            assert stream_count(torch.zeros(2)) == 1
    finally:
        torch.set_num_threads(threads)


def test_map_in_streams_gives_every_result_in_order_with_a_slow_item_not_holding_the_others():
    """Streams take the next untaken item: while one stream is held by a slow item, the other
    takes all the rest, and the results come back in the items' order."""
    release = threading.Event()
    ran_by = {}

    def work(item):
        if item == 0:
            assert release.wait(timeout=30)  # held until every other item is done
        ran_by[item] = threading.get_ident()
        if len(ran_by) == 5:
            release.set()
        return item * item

    assert map_in_streams(work, list(range(6)), streams=2) == [0, 1, 4, 9, 16, 25]
    assert len({ran_by[item] for item in range(1, 6)}) == 1 != len(set(ran_by.values()))
    assert map_in_streams(work, [], streams=2) == []
    assert map_in_streams(lambda item: item + 1, [1, 2], streams=1) == [2, 3]


def test_map_in_streams_stops_taking_items_once_one_raises():
    """A failing item ends the map: a stream finishes the item it holds and takes no more (each
    item takes 50 ms, so a stream that went on would do several in the time waited)."""
    failing = threading.Event()
    done = []

    def work(item):
        if item == 0:
            failing.set()
            raise ValueError("item 0 is bad")
        assert failing.wait(timeout=30)
        time.sleep(0.05)
        done.append(item)

    with pytest.raises(ValueError, match="item 0 is bad"):
        map_in_streams(work, list(range(20)), streams=2)
    time.sleep(0.5)
    assert len(done) <= 1


@pytest.fixture(scope="module")
def model() -> segany.Sam:
    return build_model_pair(seed=3)[1]


@pytest.fixture(scope="module")
def predictor(model) -> segany.SamPredictor:
    predictor = segany.SamPredictor(model)
    predictor.set_image(blocky_image())
    return predictor


def decode_in(count: int, predictor, sparse, dense, image_side, monkeypatch) -> tuple[torch.Tensor, ...]:
    """IoUs, mask classifiers, low-res logits and masks of a batch of prompts in ``count`` streams,
    checking that the transformer did cut the image tokens ``count`` ways."""
    cuts = []

    def counting(tasks):
        cuts.append(len(tasks))
        return in_streams(tasks)

    monkeypatch.setattr(transformer, "in_streams", counting)
    model = predictor.model
    with torch.inference_mode():
        decoded = model.mask_decoder.decode(
            predictor.features, predictor._image_pe, sparse, dense, image_side, multimask_output=True, streams=count
        )
        low_res = model.mask_decoder.upscale_masks(decoded, streams=count)
        masks = model.postprocess_masks(low_res, predictor.input_size, predictor.original_size, None, count)
    assert cuts and set(cuts) == {count}
    return decoded.iou_predictions, decoded.hyper_in, low_res, masks


@pytest.mark.parametrize("shared_image", [True, False], ids=["image side shared", "dense prompt per prompt"])
def test_decoding_in_streams_gives_the_serial_values(predictor, monkeypatch, shared_image):
    model = predictor.model
    coords = torch.tensor([[[40.0, 30.0], [90.0, 70.0]], [[200.0, 120.0], [10.0, 10.0]], [[120.0, 60.0], [5.0, 90.0]]])
    labels = torch.tensor([[1, 0], [1, 1], [1, 0]], dtype=torch.int)
    mask_input = None if shared_image else torch.randn(3, 1, 80, 80, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        sparse, dense = model.prompt_encoder(points=(coords, labels), boxes=None, masks=mask_input)
    image_side = predictor._image_side if shared_image else None
    serial = decode_in(1, predictor, sparse, dense, image_side, monkeypatch)
    for count in (2, 3):
        split = decode_in(count, predictor, sparse, dense, image_side, monkeypatch)
        for expected, actual, tolerance in zip(serial, split, (1e-6, 1e-5, 1e-5, 1e-5)):
            assert actual.shape == expected.shape
            assert (actual - expected).abs().max().item() <= tolerance * max(1.0, expected.abs().max().item())


def test_the_predictor_gives_the_serial_answers_and_keeps_its_thread_count(predictor, monkeypatch):
    prompt = dict(point_coords=np.array([[120.0, 80.0], [30.0, 150.0]]), point_labels=np.array([1, 0]))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setattr(streams, "MAX_STREAMS", 1)
        serial = predictor.predict(**prompt, return_logits=True)
        monkeypatch.setattr(streams, "MAX_STREAMS", 2)
        split = predictor.predict(**prompt, return_logits=True)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    for expected, actual in zip(serial, split):
        np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5 * max(1.0, np.abs(expected).max()))
