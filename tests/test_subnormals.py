"""Importing segany's model flushes subnormal floats to zero on every PyTorch CPU thread."""

from __future__ import annotations

import subprocess
import sys

# Subnormal inputs, multiplied across all intra-op threads: each thread's share of the
# products is zero only if that thread flushes subnormals.
PROBE = """
import torch
import segany.modeling
torch.set_num_threads(2)
x = torch.full((1 << 20,), 1e-39)
print(int((x * 1.0).count_nonzero()), torch.get_num_threads())
"""


def test_every_worker_thread_flushes_subnormals_after_import():
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    nonzero, threads = (int(word) for word in result.stdout.split())
    assert threads == 2
    assert nonzero == 0, f"{nonzero} subnormal products were kept: some threads do not flush to zero"
