"""Rows resampled in blocks of register permutes give the one-output-at-a-time values, bit for bit."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from segany.modeling import row_resample
from segany.modeling.mask_resize import bilinear_taps

# (source length, output length, scale passed to PyTorch or None): the resizes postprocessing meets.
RESIZES = [
    (1024, 1800, None),  # x4 logits to a landscape photo's width
    (683, 1200, None),  # and its height
    (256, 1024, 4.0),  # low-res logits x4
    (172, 688, 4.0),
    (1024, 640, None),  # downscaled: no block's sources fit, all one at a time
    (20, 37, None),  # a few blocks and a remainder
    (5, 7, None),  # shorter than a block
]


def resample(row: np.ndarray, taps: row_resample.Taps) -> np.ndarray:
    target = np.empty(taps.index.shape[1], dtype=np.float32)
    row_resample.mix_along(row, taps, target)
    return target


@pytest.mark.parametrize("source, output, scale", RESIZES)
def test_blocks_give_the_values_of_one_output_at_a_time(source, output, scale):
    taps = bilinear_taps(source, output, scale)
    rng = np.random.default_rng(source * output)
    blocked = row_resample.make_taps(taps.index, taps.weight, blocked=True)
    single = row_resample.make_taps(taps.index, taps.weight, blocked=False)
    assert len(single.block_starts) == 0
    if output >= source and output >= row_resample.BLOCK:
        assert (blocked.block_starts >= 0).any(), "an upscale must take the permuted blocks"
    for row in (rng.standard_normal(source), rng.uniform(-1e-6, 1e-6, source), np.full(source, 3.0)):
        row = row.astype(np.float32)
        np.testing.assert_array_equal(resample(row, blocked), resample(row, single))


def test_blocks_never_read_past_the_sources_the_taps_name():
    """A block's vector load reads BLOCK samples from its start: all within the row that the
    largest index implies, even when the taps end on the row's last sample."""
    taps = row_resample.make_taps(*bilinear_taps(1024, 1800)[:2])
    permuted = taps.block_starts[taps.block_starts >= 0]
    assert permuted.max() + row_resample.BLOCK <= taps.index.max() + 1
    lanes = taps.block_lanes[:, taps.block_starts >= 0]
    assert lanes.min() >= 0 and lanes.max() < row_resample.BLOCK


def test_blocks_on_a_cpu_without_avx2_take_the_lane_by_lane_permute():
    """Compiled for a generic x86 CPU (no AVX2), the blocks permute lane by lane: same values."""
    script = (
        "import numpy as np\n"
        "from segany.modeling import row_resample\n"
        "from segany.modeling.mask_resize import bilinear_taps\n"
        "assert not row_resample.AVX2\n"
        "taps = bilinear_taps(1024, 1800)\n"
        "row = np.random.default_rng(0).standard_normal(1024).astype(np.float32)\n"
        "outs = []\n"
        "for blocked in (True, False):\n"
        "    out = np.empty(1800, np.float32)\n"
        "    row_resample.mix_along(row, row_resample.make_taps(taps.index, taps.weight, blocked), out)\n"
        "    outs.append(out)\n"
        "assert np.array_equal(*outs)\n"
        "print('same')\n"
    )
    env = dict(os.environ, NUMBA_CPU_NAME="generic")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "same"
