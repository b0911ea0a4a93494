"""Keep freed memory in the process for the next prompt instead of handing it back to the OS.

Each prompt allocates and frees the same few tensors of 4-8 MB (the image tokens, the
upscaled masks, the masks at photo size). glibc returns such blocks to the OS when they are
freed (they are mapped on their own, or trimmed off the heap's top), so the next prompt
faults every page in again, zero-filled by the kernel: on the 2-core VM that was ~5,000 page
faults and ~10 ms of kernel time a prompt, a quarter of its time (docs/speed.md).

Serving blocks of up to 32 MiB from the heap and trimming the heap only once 256 MiB lie free
at its top keeps them: the next prompt reuses the same pages. Peak memory is unchanged (what
is kept was in use a moment before); what changes is that up to 256 MiB stay resident after
a peak. The setting is the process's, like flush-to-zero (:mod:`segany.modeling.subnormals`);
``SEGANY_KEEP_FREED_MEMORY=0`` leaves glibc's defaults alone.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

# mallopt parameters (glibc's malloc.h) and the values segany sets.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
TRIM_THRESHOLD_BYTES = 256 << 20
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's largest accepted value on 64-bit
OPT_OUT_VARIABLE = "SEGANY_KEEP_FREED_MEMORY"


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds; False where that is not done (opted out, not glibc)."""
    if os.environ.get(OPT_OUT_VARIABLE, "1") == "0":
        return False
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
