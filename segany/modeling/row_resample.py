"""One row resampled by its bilinear taps, as register permutes rather than scattered loads.

Each output sample of a bilinear resize along a row mixes two source samples, ``fma(row[i0],
w0, row[i1] * w1)``. Done one output at a time the loads are scattered, and resizing the x4
logits (1,024 wide) to a photo's width (1,800) was 60% of a mask's resize. But an upscale's
source indices climb slowly: 8 consecutive outputs read at most 8 consecutive source samples.
So each block of 8 outputs loads the 8 samples from its first source as one vector, picks its
two operands out of it with two register permutes (AVX2's ``vpermps``), and mixes them with one
vector fused multiply-add: 2,049 rows of 1,024 -> 1,800 in 0.96 ms against 2.69 ms one output at
a time (one thread). Blocks whose sources do not fit in 8 samples (downscales, the row's end) and
the outputs after the last whole block go one at a time. Both ways round the same (one fused
multiply-add per pair), so the values are bit-identical.
"""

from __future__ import annotations

from typing import NamedTuple

import llvmlite.binding
import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

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
    """One contiguous row resized by ``taps`` (:func:`make_taps`) into contiguous ``target``."""
    index, weight, starts, lanes = taps
    outputs, blocks = target.shape[0], starts.shape[0]
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
