"""Keep freed memory in the process for the next prompt instead of handing it back to the OS.

Each prompt allocates and frees the same few tensors of 4-8 MB (the image tokens, the
upscaled masks, the masks at photo size). glibc returns such blocks to the OS when they are
freed (they are mapped on their own, or trimmed off the heap's top), so the next prompt
faults every page in again, zero-filled by the kernel: on the 2-core VM that was ~5,000 page
faults and ~10 ms of kernel time a prompt, a quarter of its time (docs/speed.md).

Serving every block from the heap (glibc maps blocks of 32 MiB and more on their own whatever
the threshold, so mapping is turned off) and trimming the heap only once 256 MiB lie free at its
top keeps them: the next prompt reuses the same pages. The image encoder gains as much: vit_b's
qkv and MLP activations (38-50 MB a block) faulted 350,000-500,000 pages, ~0.8 s of kernel time,
into every embedding. Peak memory is about unchanged (what is kept was in use a moment before);
what changes is that up to 256 MiB stay resident after a peak. The setting is the process's,
like flush-to-zero (:mod:`segany.modeling.subnormals`); ``SEGANY_KEEP_FREED_MEMORY=0`` leaves
glibc's defaults alone.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

# mallopt parameters (glibc's malloc.h) and the values segany sets.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
TRIM_THRESHOLD_BYTES = 256 << 20
OPT_OUT_VARIABLE = "SEGANY_KEEP_FREED_MEMORY"


def keep_freed_memory() -> bool:
    """Turn glibc's per-block mappings off and raise its trim threshold; False where that is not
    done (opted out, not glibc)."""
    if os.environ.get(OPT_OUT_VARIABLE, "1") == "0":
        return False
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
