"""Bilinear resizing of mask logits on the CPU, with PyTorch's arithmetic, several times faster.

SAM's postprocessing resizes every low-res mask bilinearly twice (x4 to the encoder input, then
to the photo) and a predictor thresholds the result. PyTorch's CPU kernel gathers four source
pixels for every output pixel of each resize and writes each full-size result to memory. Here
both resizes run together, a band of output rows at a time, so that what one band needs (a few
low-res rows, the x4 rows between) stays in the core's cache; each resize is two separable
passes, along the rows (two source pixels per output column, once per source row), then down
the columns (two whole rows mixed per output row, which vectorises); and when only masks are
wanted the threshold is applied as the last pass writes, so the full-size logits never exist.

The taps and weights are PyTorch's (:func:`bilinear_taps`, its float32 source-index formula) and
each pass rounds as its vectorised kernel does (one fused multiply-add per pair), so on
photo-sized outputs the values are bit-identical to ``F.interpolate``'s; on outputs only a few
pixels wide, where PyTorch takes another path, they can differ in the last bit
(tests/test_mask_resize.py).

The pass along the rows is done in register permutes rather than scattered loads. Each output
sample mixes two source samples, ``fma(row[i0], w0, row[i1] * w1)``; one output at a time the
loads are scattered, and resizing the x4 logits (1,024 wide) to a photo's width (1,800) was 60%
of a mask's resize. But an upscale's source indices climb slowly: 8 consecutive outputs read at
most 8 consecutive source samples. So each block of 8 outputs loads the 8 samples from its first
source as one vector, picks its two operands out of it with two register permutes (AVX2's
``vpermps``), and mixes them with one vector fused multiply-add: 2,049 rows of 1,024 -> 1,800 in
0.96 ms against 2.69 ms one output at a time (one thread). Blocks whose sources do not fit in 8
samples (downscales, the row's end) and the outputs after the last whole block go one at a time,
with the same rounding.

The kernels live in this one module on purpose: numba's on-disk cache of a kernel is not
invalidated when a kernel it calls in another module changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache, partial
from typing import NamedTuple

import llvmlite.binding
import numba
import numpy as np
import torch
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from segany.modeling.streams import in_streams, split_range

# Output rows resized together: a band's intermediate rows (a few hundred KB) stay in the cache.
BAND_ROWS = 32
# Below this many output pixels per stream, handing bands to another thread does not pay (one
# 320 x 240 mask gains nothing from two; one 640 x 480 mask takes 30% less time).
MIN_PIXELS_PER_WORKER = 100_000


# Output samples mixed per block: one AVX2 register of float32.
BLOCK = 8
# AVX2's register permute (vpermps), where the CPU that numba compiles for has it.
_PERMUTE = "llvm.x86.avx2.permps"


def _has_avx2() -> bool:
    """Whether numba compiles for a CPU with AVX2: the host's, unless a target CPU is configured."""
    if numba.config.CPU_NAME not in (None, "host"):
        return False
    return bool(llvmlite.binding.get_host_cpu_features().get("avx2"))


AVX2 = _has_avx2()


class Taps(NamedTuple):
    """For each output index of a 1-D bilinear resize: its two source indices and their weights,
    and how its blocks of :data:`BLOCK` outputs are permuted (:func:`make_taps`)."""

    index: np.ndarray  # 2 x out, int32; both rows equal at the last source index
    weight: np.ndarray  # 2 x out, float32
    block_starts: np.ndarray  # blocks, int64: each block's first source index, -1 to go one at a time
    block_lanes: np.ndarray  # 2 x blocks x BLOCK, int32: each output's two sources, from its block's start


def make_taps(index: np.ndarray, weight: np.ndarray, blocked: bool = AVX2) -> Taps:
    """:class:`Taps` of ``index`` and ``weight`` (2 x out each), in blocks of :data:`BLOCK` outputs
    when ``blocked`` (by default where the CPU permutes in registers). A block is permuted when its
    sources lie within BLOCK samples of its first, which the row (as long as the largest index
    says) has."""
    index = np.ascontiguousarray(index, dtype=np.int32)
    weight = np.ascontiguousarray(weight, dtype=np.float32)
    blocks = index.shape[1] // BLOCK if blocked else 0
    sources = index[:, : blocks * BLOCK].reshape(2, blocks, BLOCK).astype(np.int64)
    starts = sources[0, :, 0].copy()
    lanes = sources - starts[:, None]
    if blocks:
        fits = (lanes.min(axis=(0, 2)) >= 0) & (lanes.max(axis=(0, 2)) < BLOCK)
        starts[~(fits & (starts + BLOCK <= int(index.max()) + 1))] = -1
    return Taps(index, weight, starts, np.ascontiguousarray(lanes, dtype=np.int32))


@intrinsic
def fused_multiply_add(typingctx, a, b, c):
    """a * b + c with one rounding (llvm.fma), as PyTorch's vectorised kernel mixes each pair."""
    signature = types.float32(types.float32, types.float32, types.float32)

    def codegen(context, builder, sig, args):
        return builder.fma(*args)

    return signature, codegen


def _permute(builder: ir.IRBuilder, source: ir.Value, lanes: ir.Value) -> ir.Value:
    """``source[lanes]`` for two BLOCK-lane vectors: one AVX2 permute, or lane by lane on other CPUs."""
    if AVX2:
        signature = ir.FunctionType(source.type, [source.type, lanes.type])
        return builder.call(cgutils.get_or_insert_function(builder.module, signature, _PERMUTE), [source, lanes])
    result = ir.Constant(source.type, ir.Undefined)
    for lane in range(BLOCK):
        position = ir.Constant(ir.IntType(32), lane)
        result = builder.insert_element(
            result, builder.extract_element(source, builder.extract_element(lanes, position)), position
        )
    return result


@intrinsic
def _mix_block(typingctx, source, first, second, first_weight, second_weight, target):
    """``target[k] = fma(source[first[k]], first_weight[k], source[second[k]] * second_weight[k])``
    for the BLOCK lanes k; every argument is an address."""
    address = types.intp
    signature = types.void(address, address, address, address, address, address)

    def codegen(context, builder, sig, args):
        floats, integers = ir.VectorType(ir.FloatType(), BLOCK), ir.VectorType(ir.IntType(32), BLOCK)

        def load(value: ir.Value, vector: ir.VectorType) -> ir.Value:
            return builder.load(builder.inttoptr(value, vector.as_pointer()), align=4)

        source = load(args[0], floats)
        first_values = _permute(builder, source, load(args[1], integers))
        second_values = _permute(builder, source, load(args[2], integers))
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(floats, [floats, floats, floats]), f"llvm.fma.v{BLOCK}f32"
        )
        mixed = builder.call(fma, [first_values, load(args[3], floats), builder.fmul(second_values, load(args[4], floats))])
        builder.store(mixed, builder.inttoptr(args[5], floats.as_pointer()), align=4)
        return context.get_dummy_value()

    return signature, codegen


@numba.njit(nogil=True, cache=True)
def _mix_one_at_a_time(row, index, weight, target, start, stop):
    """Outputs ``start``..``stop``-1 of :func:`mix_along`, each from its own two loads.

    The source indices are read as unsigned: numba then skips its negative-index wraparound on
    each of the two loads, and with 32-bit indices this loop runs ~25% faster."""
    for x in range(start, stop):
        first, second = np.uint32(index[0, x]), np.uint32(index[1, x])
        target[x] = fused_multiply_add(row[first], weight[0, x], row[second] * weight[1, x])


@numba.njit(nogil=True, cache=True)
def mix_along(row, taps, target):
    """One contiguous row resized by ``taps`` (:func:`make_taps`) into contiguous ``target``, as
    long as the taps' outputs."""
    index, weight, starts, lanes = taps
    outputs, blocks = index.shape[1], starts.shape[0]
    row_address, lane_address, weight_address = row.ctypes.data, lanes.ctypes.data, weight.ctypes.data
    target_address = target.ctypes.data
    for block in range(blocks):
        begin = block * BLOCK
        if starts[block] < 0:
            _mix_one_at_a_time(row, index, weight, target, begin, begin + BLOCK)
        else:
            _mix_block(
                row_address + 4 * starts[block],
                lane_address + 4 * begin,
                lane_address + 4 * (blocks * BLOCK + begin),
                weight_address + 4 * begin,
                weight_address + 4 * (outputs + begin),
                target_address + 4 * begin,
            )
    _mix_one_at_a_time(row, index, weight, target, blocks * BLOCK, outputs)


@lru_cache(maxsize=64)
def bilinear_taps(in_length: int, out_length: int, scale: float | None = None) -> Taps:
    """The taps of resizing ``in_length`` samples to ``out_length`` (align_corners=False).

    ``scale`` is the upscaling factor when the caller passes one to PyTorch (the step between
    output samples is then exactly 1 / scale), else the step is in / out in float32, as PyTorch
    computes it. PyTorch's source position step * (i + 0.5) - 0.5 is one fused multiply-add in
    float32; the product is exact in float64, so rounding the float64 result once is the same.
    """
    step = np.float32(1.0 / scale) if scale else np.float32(in_length) / np.float32(out_length)
    source = (np.float64(step) * (np.arange(out_length) + 0.5) - 0.5).astype(np.float32)
    source = np.maximum(source, np.float32(0))
    first = source.astype(np.int64)
    fraction = np.minimum(source - first.astype(np.float32), np.float32(1))
    second = np.where(first < in_length - 1, first + 1, first)
    return make_taps(np.stack([first, second]), np.stack([np.float32(1) - fraction, fraction]))


@numba.njit(nogil=True, cache=True)
def _mix_rows(top, bottom, top_weight, bottom_weight, threshold, target):
    """Two rows mixed into ``target``; with a ``threshold``, ``target`` receives mix > threshold."""
    for x in range(target.shape[0]):
        value = fused_multiply_add(top[x], top_weight, bottom[x] * bottom_weight)
        if threshold is None:
            target[x] = value
        else:
            target[x] = value > threshold


@numba.njit(nogil=True, cache=True)
def _mix_rows_tallied(top, bottom, top_weight, bottom_weight, threshold, cutoffs, target, tally, y):
    """:func:`_mix_rows` with a threshold that also adds to ``tally`` (pixels above each of the
    two ``cutoffs``, then the x0, y0, x1, y1 box of the pixels above the threshold) this row ``y``."""
    above_first, above_second, first_x, last_x = 0, 0, -1, -1
    for x in range(target.shape[0]):
        value = fused_multiply_add(top[x], top_weight, bottom[x] * bottom_weight)
        above = value > threshold
        target[x] = above
        above_first += value > cutoffs[0]
        above_second += value > cutoffs[1]
        if above:
            last_x = x
            if first_x < 0:
                first_x = x
    tally[0] += above_first
    tally[1] += above_second
    if first_x >= 0:
        tally[2], tally[3] = min(tally[2], first_x), min(tally[3], y)
        tally[4], tally[5] = max(tally[4], last_x), max(tally[5], y)


@numba.njit(nogil=True, cache=True)
def _finish_row(top, bottom, top_weight, bottom_weight, threshold, target, cutoffs, tallies, job, y):
    """The last pass of one output row: plain, thresholded, or thresholded and tallied."""
    if tallies is None:
        _mix_rows(top, bottom, top_weight, bottom_weight, threshold, target)
    else:
        _mix_rows_tallied(top, bottom, top_weight, bottom_weight, threshold, cutoffs, target, tallies[job], y)


@numba.njit(nogil=True, cache=True)
def _widest_band(rows_index, outer_index, band):
    """The most source rows (of ``rows_index``'s source) one band of output rows reads, when the
    output rows are ``outer_index``'s sources (or the output itself when it is None)."""
    height = rows_index.shape[1] if outer_index is None else outer_index.shape[1]
    most = 0
    for top in range(0, height, band):
        bottom = min(height, top + band) - 1
        if outer_index is None:
            first, last = top, bottom
        else:
            first, last = outer_index[0, top], outer_index[1, bottom]
        most = max(most, rows_index[1, last] - rows_index[0, first] + 1)
    return most


@numba.njit(nogil=True, cache=True)
def _upscale_bands(low, up_columns, up_rows, threshold, cutoffs, tallies, out, band, start, stop):
    """Bands numbered start..stop-1 (over planes x bands of ``band`` rows) of ``low`` upscaled
    by the x-scale taps ``up_*`` (index, weight pairs) straight to ``out``'s size; with
    ``tallies``, each band's row of it receives :func:`_mix_rows_tallied`'s counts and box."""
    height = out.shape[1]
    bands = (height + band - 1) // band
    wide = np.empty((_widest_band(up_rows[0], None, band), out.shape[2]), dtype=np.float32)
    for job in range(start, stop):
        plane, top = job // bands, (job % bands) * band
        bottom = min(height, top + band)
        first = up_rows[0][0, top]
        for row in range(first, up_rows[0][1, bottom - 1] + 1):
            mix_along(low[plane, row], up_columns, wide[row - first])
        for y in range(top, bottom):
            _finish_row(wide[up_rows[0][0, y] - first], wide[up_rows[0][1, y] - first],
                        up_rows[1][0, y], up_rows[1][1, y], threshold, out[plane, y], cutoffs, tallies, job, y)


@numba.njit(nogil=True, cache=True)
def _upscale_resize_bands(
    low, up_columns, up_rows, photo_columns, photo_rows, threshold, cutoffs, tallies, out, band, start, stop
):
    """As :func:`_upscale_bands`, then resized by the ``photo_*`` taps to ``out``'s size: each
    band makes only the upscaled rows it reads."""
    height = out.shape[1]
    bands = (height + band - 1) // band
    wide_low = np.empty((_widest_band(up_rows[0], photo_rows[0], band), up_columns[0].shape[1]), dtype=np.float32)
    upscaled = np.empty(up_columns[0].shape[1], dtype=np.float32)
    wide = np.empty((_widest_band(photo_rows[0], None, band), out.shape[2]), dtype=np.float32)
    for job in range(start, stop):
        plane, top = job // bands, (job % bands) * band
        bottom = min(height, top + band)
        first, last = photo_rows[0][0, top], photo_rows[0][1, bottom - 1]
        first_low = up_rows[0][0, first]
        for row in range(first_low, up_rows[0][1, last] + 1):
            mix_along(low[plane, row], up_columns, wide_low[row - first_low])
        for row in range(first, last + 1):
            _mix_rows(wide_low[up_rows[0][0, row] - first_low], wide_low[up_rows[0][1, row] - first_low],
                      up_rows[1][0, row], up_rows[1][1, row], None, upscaled)
            mix_along(upscaled, photo_columns, wide[row - first])
        for y in range(top, bottom):
            _finish_row(wide[photo_rows[0][0, y] - first], wide[photo_rows[0][1, y] - first],
                        photo_rows[1][0, y], photo_rows[1][1, y], threshold, out[plane, y], cutoffs, tallies, job, y)


def _run_split(kernel, jobs: int, pixels: int, streams: int | None, *args) -> None:
    """Run ``kernel(*args, start, stop)`` over jobs 0..jobs-1, split across up to ``streams``
    parallel CPU streams (default: PyTorch's thread count) when the ``pixels`` to write are many
    (the kernels release the GIL)."""
    streams = torch.get_num_threads() if streams is None else streams
    workers = max(1, min(streams, jobs, pixels // MIN_PIXELS_PER_WORKER))
    in_streams([partial(kernel, *args, part.start, part.stop) for part in split_range(jobs, workers)])


def _upscale(
    planes: np.ndarray,
    scale: float,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    threshold: float | None,
    cutoffs: tuple[float, float] | None,
    streams: int | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The resized planes (logits, or masks with a ``threshold``) and, with ``cutoffs``, each
    band's tally (see :func:`_mix_rows_tallied`), planes x bands x 6."""
    whole = (range(original_size[0]), range(original_size[1]))
    taps = _window_taps(planes.shape[-2:], scale, input_size, original_size, *whole)
    return _resize(planes, taps, threshold, cutoffs, streams)


def _resize(
    planes: np.ndarray,
    taps: list[AxisTaps],
    threshold: float | None,
    cutoffs: tuple[float, float] | None,
    streams: int | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`_upscale` by the rows' and columns' :class:`AxisTaps` (their ``up`` taps index ``planes``)."""
    planes = np.ascontiguousarray(planes, dtype=np.float32)
    rows, columns = taps
    count = len(planes)
    out_size = (rows.out_length, columns.out_length)
    out = np.empty((count, *out_size), dtype=np.float32 if threshold is None else np.bool_)
    limit = None if threshold is None else np.float32(threshold)
    bands = -(-out_size[0] // BAND_ROWS)
    tallies = levels = None
    if cutoffs is not None:
        levels = np.array(cutoffs, dtype=np.float32)
        tallies = np.tile(np.array([0, 0, out_size[1], out_size[0], -1, -1], dtype=np.int64), (count * bands, 1))
    if rows.photo is None:
        _run_split(_upscale_bands, count * bands, out.size, streams, planes, columns.up, rows.up, limit, levels,
                   tallies, out, BAND_ROWS)
    else:
        _run_split(_upscale_resize_bands, count * bands, out.size, streams, planes, columns.up, rows.up,
                   columns.photo, rows.photo, limit, levels, tallies, out, BAND_ROWS)
    return out, None if tallies is None else tallies.reshape(count, bands, 6)


class AxisTaps(NamedTuple):
    """Along one axis, the taps that give output indices ``out``: ``up`` from the low-res logits
    to the encoder input, then ``photo`` to the photo (None when the two are the same size),
    each indexing its source from the first sample that the outputs read."""

    up: Taps
    photo: Taps | None
    low: range  # the low-res samples read (``up``'s index 0 is low.start)
    out_length: int


@lru_cache(maxsize=128)
def _axis_taps(low_length: int, scale: float, input_length: int, original_length: int, out: range,
               resized: bool) -> AxisTaps:
    """The :class:`AxisTaps` of outputs ``out`` of an axis of ``low_length`` logits. Kept per
    geometry: every prompt on an image asks for the same ones, and blocking them for the row
    kernels (:func:`make_taps`) costs ~40 us a set."""
    up, photo = bilinear_taps(low_length, input_length, scale), None
    if resized:
        whole = bilinear_taps(input_length, original_length)
        index, weight = whole.index[:, out.start : out.stop], whole.weight[:, out.start : out.stop]
        first, last = int(index.min()), int(index.max())
        photo = make_taps(index - first, weight)
        sources = range(first, last + 1)
    else:
        sources = out
    index, weight = up.index[:, sources.start : sources.stop], up.weight[:, sources.start : sources.stop]
    low = range(int(index.min()), int(index.max()) + 1)
    return AxisTaps(make_taps(index - low.start, weight), photo, low, len(out))


def _window_taps(
    low_size: tuple[int, int], scale: float, input_size: tuple[int, int], original_size: tuple[int, int],
    rows: range, columns: range,
) -> list[AxisTaps]:
    """The rows' and columns' :class:`AxisTaps` of output window ``rows`` x ``columns``."""
    resized = tuple(input_size) != tuple(original_size)
    return [
        _axis_taps(length, scale, inner, outer, out, resized)
        for length, inner, outer, out in zip(low_size, input_size, original_size, (rows, columns))
    ]


def window_sources(
    low_size: tuple[int, int], scale: float, input_size: tuple[int, int], original_size: tuple[int, int],
    rows: range, columns: range,
) -> tuple[range, range]:
    """The low-res rows and columns (of ``low_size`` logits) that the output window ``rows`` x
    ``columns`` of :func:`upscale_planes` reads."""
    row_taps, column_taps = _window_taps(low_size, scale, input_size, original_size, rows, columns)
    return row_taps.low, column_taps.low


def upscale_window(
    planes: np.ndarray,
    origin: tuple[int, int],
    low_size: tuple[int, int],
    scale: float,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    rows: range,
    columns: range,
    threshold: float,
) -> np.ndarray:
    """The window ``rows`` x ``columns`` of :func:`upscale_planes`'s masks (logits > ``threshold``)
    of ``low_size`` logits, from only the logits it reads: ``planes`` (n x h x w) holds the
    logits from row, column ``origin`` on, and must cover :func:`window_sources`. Same
    arithmetic as the whole resize, so the window's values are the whole one's."""
    taps = []
    for axis, axis_taps in enumerate(_window_taps(low_size, scale, input_size, original_size, rows, columns)):
        start = axis_taps.low.start - origin[axis]
        if start < 0 or start + len(axis_taps.low) > planes.shape[1 + axis]:
            raise ValueError(f"the logits given do not cover the window's sources ({axis_taps.low} along axis {axis})")
        taps.append(axis_taps._replace(up=make_taps(axis_taps.up.index + start, axis_taps.up.weight)))
    return _resize(planes, taps, threshold, None)[0]


def upscale_planes(
    planes: np.ndarray,
    scale: float,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    threshold: float | None = None,
    streams: int | None = None,
) -> np.ndarray:
    """Low-res logits (planes x h x w, float32) upscaled by ``scale`` to ``input_size`` (the rest
    of the x-scale grid is never computed), then resized to ``original_size``; with a
    ``threshold``, the boolean masks logits > threshold instead. Bands of rows go to up to
    ``streams`` parallel CPU streams (default: PyTorch's thread count)."""
    return _upscale(planes, scale, input_size, original_size, threshold, None, streams)[0]


@dataclass(frozen=True)
class TalliedMasks:
    """Masks upscaled from logits, with what the automatic generator's filters read of them."""

    masks: np.ndarray  # N x H x W bool: logits > threshold
    tight: np.ndarray  # N int64: pixels with logits > threshold + offset
    loose: np.ndarray  # N int64: pixels with logits > threshold - offset
    boxes: np.ndarray  # N x 4 int64: XYXY of the masks (inclusive), zeros if empty


def upscale_planes_tallied(
    planes: np.ndarray,
    scale: float,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    threshold: float,
    offset: float,
) -> TalliedMasks:
    """:func:`upscale_planes` thresholded, counting on the way the pixels a stability score needs
    and the masks' boxes, so that the logits are never stored and the masks never re-read."""
    masks, tallies = _upscale(planes, scale, input_size, original_size, threshold, (threshold + offset, threshold - offset))
    boxes = np.concatenate([tallies[..., 2:4].min(axis=1), tallies[..., 4:6].max(axis=1)], axis=1)
    boxes[boxes[:, 2] < 0] = 0
    return TalliedMasks(masks, tallies[..., 0].sum(axis=1), tallies[..., 1].sum(axis=1), boxes)
