"""The CPU mask-resizing kernels against PyTorch's bilinear interpolation, which they replace."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from segany.modeling import mask_resize, streams
from segany.modeling.mask_resize import bilinear_taps, upscale_planes

# (low-res rows, cols) -> encoder input size -> photo size, as postprocessing meets them.
PHOTO_GEOMETRIES = [
    ((172, 256), (683, 1024), (1200, 1800)),  # landscape 3:2, upscaled
    ((256, 172), (1024, 683), (1800, 1200)),  # portrait
    ((193, 256), (768, 1024), (480, 640)),  # downscaled
    ((256, 256), (1024, 1024), (1024, 1024)),  # no second resize
]
SMALL_GEOMETRIES = [((12, 17), (47, 64), (17, 23)), ((6, 8), (23, 29), (40, 51))]


def official_postprocess(planes: torch.Tensor, input_size, original_size) -> torch.Tensor:
    """The official package's arithmetic: x4 to the input (explicit scale), then to the photo."""
    upscaled = torch.ops.aten.upsample_bilinear2d(planes[:, None], list(input_size), False, 4.0, 4.0)
    if tuple(original_size) != tuple(input_size):
        upscaled = F.interpolate(upscaled, tuple(original_size), mode="bilinear", align_corners=False)
    return upscaled[:, 0]


def taps_read_off_pytorch(in_length: int, out_length: int, scale: float | None) -> np.ndarray:
    """out x in weight matrix of PyTorch's 1-D bilinear resize: it resizes each unit vector."""
    unit = torch.eye(in_length).reshape(in_length, 1, 1, in_length)
    if scale is None:
        resized = F.interpolate(unit, (1, out_length), mode="bilinear", align_corners=False)
    else:
        resized = torch.ops.aten.upsample_bilinear2d(unit, [1, out_length], False, scale, scale)
    return resized.reshape(in_length, out_length).T.numpy()


@pytest.mark.parametrize(
    "in_length, out_length, scale",
    [(256, 1024, 4.0), (172, 683, 4.0), (1024, 1800, None), (683, 1200, None), (1024, 640, None), (768, 480, None),
     (7, 23, None), (64, 17, None), (3, 3, None)],
)
def test_taps_are_pytorchs(in_length, out_length, scale):
    taps = bilinear_taps(in_length, out_length, scale)
    (first, second), (first_weight, second_weight) = taps.index, taps.weight
    weights = taps_read_off_pytorch(in_length, out_length, scale)
    rows = np.arange(out_length)
    apart = second != first
    assert np.array_equal(weights[rows[apart], first[apart]], first_weight[apart])
    assert np.array_equal(weights[rows[apart], second[apart]], second_weight[apart])
    # Where both taps are one source sample (the last one), PyTorch applies their sum.
    summed = first_weight[~apart] + second_weight[~apart]
    np.testing.assert_allclose(weights[rows[~apart], first[~apart]], summed, rtol=1e-7)
    assert np.count_nonzero(weights) == np.count_nonzero(first_weight) + np.count_nonzero(second_weight * apart)


@pytest.mark.parametrize("low_res, input_size, original_size", PHOTO_GEOMETRIES)
def test_photo_sized_logits_and_masks_are_bit_identical_to_pytorchs(low_res, input_size, original_size):
    planes = torch.randn(3, *low_res, generator=torch.Generator().manual_seed(0)) * 4
    expected = official_postprocess(planes, input_size, original_size).numpy()
    logits = upscale_planes(planes.numpy(), 4, input_size, original_size)
    assert logits.shape == expected.shape and logits.dtype == np.float32
    assert np.array_equal(logits, expected)
    masks = upscale_planes(planes.numpy(), 4, input_size, original_size, threshold=0.0)
    assert masks.dtype == np.bool_ and np.array_equal(masks, expected > 0)
    assert 0.2 < masks.mean() < 0.8  # both sides of the threshold are exercised


@pytest.mark.parametrize("low_res, input_size, original_size", SMALL_GEOMETRIES)
def test_tiny_outputs_agree_to_the_last_bit(low_res, input_size, original_size):
    """PyTorch takes another path for tiny outputs; the values differ by rounding only."""
    planes = torch.randn(2, *low_res, generator=torch.Generator().manual_seed(1)) * 4
    expected = official_postprocess(planes, input_size, original_size).numpy()
    logits = upscale_planes(planes.numpy(), 4, input_size, original_size)
    np.testing.assert_allclose(logits, expected, rtol=0, atol=4 * np.finfo(np.float32).eps * np.abs(expected).max())
    masks = upscale_planes(planes.numpy(), 4, input_size, original_size, threshold=0.5)
    assert np.array_equal(masks, logits > 0.5)


def test_results_do_not_depend_on_the_thread_count(monkeypatch):
    monkeypatch.setattr(mask_resize, "MIN_PIXELS_PER_WORKER", 1)  # split even a few masks
    planes = np.random.default_rng(2).normal(size=(3, 172, 256)).astype(np.float32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = upscale_planes(planes, 4, (683, 1024), (1200, 1800))
        torch.set_num_threads(3)
        split = upscale_planes(planes, 4, (683, 1024), (1200, 1800))
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(alone, split)


def _resize_in_child(queue) -> None:
    planes = np.ones((2, 172, 256), dtype=np.float32)
    queue.put(bool(upscale_planes(planes, 4, (683, 1024), (1200, 1800), threshold=0.5).all()))


def test_a_forked_child_resizes_with_its_own_threads(monkeypatch):
    """Worker threads do not survive fork: a child that inherited the pool must not wait on them."""
    monkeypatch.setattr(mask_resize, "MIN_PIXELS_PER_WORKER", 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        upscale_planes(np.zeros((3, 172, 256), np.float32), 4, (683, 1024), (1200, 1800))  # the parent's pool
        assert streams._pool is not None
        context = multiprocessing.get_context("fork")
        queue = context.Queue()
        child = context.Process(target=_resize_in_child, args=(queue,))
        child.start()
        child.join(timeout=60)
        alive = child.is_alive()
        if alive:
            child.kill()
    finally:
        torch.set_num_threads(threads)
    assert not alive and child.exitcode == 0 and queue.get(timeout=5) is True


def tally_planes() -> np.ndarray:
    """Random logits, plus an empty mask, a full one and one set only near a corner."""
    planes = np.random.default_rng(3).normal(size=(5, 172, 256)).astype(np.float32) * 4
    planes[2] = -5
    planes[3] = 5
    planes[4] = -5
    planes[4, 160:, 240:] = 5
    return planes


@pytest.mark.parametrize("original_size", [(683, 1024), (1200, 1800), (480, 640)])
def test_tallies_are_those_of_the_logits(original_size):
    from segany.masks import masks_to_boxes

    planes = tally_planes()
    logits = upscale_planes(planes, 4, (683, 1024), original_size)
    tallied = mask_resize.upscale_planes_tallied(planes, 4, (683, 1024), original_size, threshold=0.5, offset=1.0)
    masks = logits > 0.5
    assert np.array_equal(tallied.masks, masks)
    assert np.array_equal(tallied.tight, (logits > 1.5).sum(axis=(1, 2)))
    assert np.array_equal(tallied.loose, (logits > -0.5).sum(axis=(1, 2)))
    assert np.array_equal(tallied.boxes, masks_to_boxes(torch.from_numpy(masks)).numpy())
    assert tallied.tight[2] == tallied.loose[2] == 0 and not tallied.boxes[2].any()  # the empty mask
    assert tallied.boxes[4, 0] > original_size[1] // 2 and tallied.boxes[4, 3] == original_size[0] - 1


def test_sam_tallied_postprocessing_equals_pytorchs_kernels(monkeypatch):
    """The automatic generator's CPU path against the one other devices take (PyTorch's kernels)."""
    import segany
    from segany.modeling import sam

    model = segany.build_sam("default")
    low_res = torch.from_numpy(tally_planes()[:, :128, :128].copy())
    input_size, original_size = (341, 512), (600, 900)
    masks, stability, boxes = model.postprocess_masks_tallied(low_res, input_size, original_size, 1.0)
    logits = model.postprocess_masks(low_res, input_size, original_size)
    monkeypatch.setattr(sam, "_resized_by_cpu_kernels", lambda planes: False)
    expected = model.postprocess_masks_tallied(low_res, input_size, original_size, 1.0)
    assert torch.equal(model.postprocess_masks(low_res, input_size, original_size), logits)
    assert masks.shape == (5, *original_size) and torch.equal(masks, expected[0])
    assert torch.equal(boxes, expected[2])
    torch.testing.assert_close(stability, expected[1], equal_nan=True, rtol=0, atol=0)
    assert torch.isnan(stability[2])  # an empty mask has no stability, as in the official package


@pytest.mark.parametrize("low_res, input_size, original_size", PHOTO_GEOMETRIES + SMALL_GEOMETRIES)
def test_a_window_resized_from_its_sources_alone_is_that_window_of_the_whole(low_res, input_size, original_size):
    """Edge strips and an inner patch, each resized from only the logits window_sources names
    (plus a margin, as a caller cutting whole tokens has), equal the whole resize's pixels."""
    generator = torch.Generator().manual_seed(3)
    planes = torch.randn(3, *low_res, generator=generator).numpy()
    whole = upscale_planes(planes, 4.0, input_size, original_size, threshold=0.1)
    height, width = original_size
    edge = min(21, height, width)
    windows = [
        (range(height), range(edge)),
        (range(height), range(width - edge, width)),
        (range(edge), range(width)),
        (range(height - edge, height), range(width)),
        (range(height // 3, height // 2 + 1), range(width // 4, width // 2 + 1)),
    ]
    for rows, columns in windows:
        low_rows, low_columns = mask_resize.window_sources(low_res, 4.0, input_size, original_size, rows, columns)
        assert len(low_rows) < low_res[0] or len(rows) == height
        top, left = max(0, low_rows.start - 2), max(0, low_columns.start - 3)
        part = planes[:, top : low_rows.stop + 1, left : low_columns.stop + 2]
        window = mask_resize.upscale_window(
            part, (top, left), low_res, 4.0, input_size, original_size, rows, columns, threshold=0.1
        )
        np.testing.assert_array_equal(window, whole[:, rows.start : rows.stop, columns.start : columns.stop])
    with pytest.raises(ValueError, match="do not cover"):
        mask_resize.upscale_window(
            planes[:, 1:], (1, 0), low_res, 4.0, input_size, original_size, range(height), range(edge), 0.1
        )


# (source length, output length, scale passed to PyTorch or None): the resizes postprocessing meets.
ROW_RESIZES = [
    (1024, 1800, None),  # x4 logits to a landscape photo's width
    (683, 1200, None),  # and its height
    (256, 1024, 4.0),  # low-res logits x4
    (172, 688, 4.0),
    (1024, 640, None),  # downscaled: no block's sources fit, all one at a time
    (20, 37, None),  # a few blocks and a remainder
    (5, 7, None),  # shorter than a block
]


def resample(row: np.ndarray, taps: mask_resize.Taps) -> np.ndarray:
    target = np.empty(taps.index.shape[1], dtype=np.float32)
    mask_resize.mix_along(row, taps, target)
    return target


@pytest.mark.parametrize("source, output, scale", ROW_RESIZES)
def test_blocks_give_the_values_of_one_output_at_a_time(source, output, scale):
    taps = bilinear_taps(source, output, scale)
    rng = np.random.default_rng(source * output)
    blocked = mask_resize.make_taps(taps.index, taps.weight, blocked=True)
    single = mask_resize.make_taps(taps.index, taps.weight, blocked=False)
    assert len(single.block_starts) == 0
    if output >= source and output >= mask_resize.BLOCK:
        assert (blocked.block_starts >= 0).any(), "an upscale must take the permuted blocks"
    for row in (rng.standard_normal(source), rng.uniform(-1e-6, 1e-6, source), np.full(source, 3.0)):
        row = row.astype(np.float32)
        np.testing.assert_array_equal(resample(row, blocked), resample(row, single))


def test_blocks_never_read_past_the_sources_the_taps_name():
    """A block's vector load reads BLOCK samples from its start: all within the row that the
    largest index implies, even when the taps end on the row's last sample."""
    taps = mask_resize.make_taps(*bilinear_taps(1024, 1800)[:2])
    permuted = taps.block_starts[taps.block_starts >= 0]
    assert permuted.max() + mask_resize.BLOCK <= taps.index.max() + 1
    lanes = taps.block_lanes[:, taps.block_starts >= 0]
    assert lanes.min() >= 0 and lanes.max() < mask_resize.BLOCK


def test_blocks_on_a_cpu_without_avx2_take_the_lane_by_lane_permute():
    """Compiled for a generic x86 CPU (no AVX2), the blocks permute lane by lane: same values."""
    script = (
        "import numpy as np\n"
        "from segany.modeling import mask_resize\n"
        "from segany.modeling.mask_resize import bilinear_taps\n"
        "assert not mask_resize.AVX2\n"
        "taps = bilinear_taps(1024, 1800)\n"
        "row = np.random.default_rng(0).standard_normal(1024).astype(np.float32)\n"
        "outs = []\n"
        "for blocked in (True, False):\n"
        "    out = np.empty(1800, np.float32)\n"
        "    mask_resize.mix_along(row, mask_resize.make_taps(taps.index, taps.weight, blocked), out)\n"
        "    outs.append(out)\n"
        "assert np.array_equal(*outs)\n"
        "print('same')\n"
    )
    env = dict(os.environ, NUMBA_CPU_NAME="generic")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "same"
