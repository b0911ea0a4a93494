"""Importing segany's model keeps freed memory for reuse: repeated prompts stop faulting pages in."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from segany.modeling.freed_memory import OPT_OUT_VARIABLE

# A predictor on a model whose embedding is SAM's 64 x 64 (the decoder's temporaries are
# 4-8 MB a prompt, as with the official checkpoints), answering prompts on a 1200 x 1800
# photo; prints the minor page faults of the last ten prompts, after warm-up.
PROBE = """
import dataclasses, resource
import numpy as np, torch
from segany.build import CONFIGS, build_model
from segany.predictor import SamPredictor
torch.manual_seed(0)
model = build_model(dataclasses.replace(CONFIGS["tiny"], image_size=1024, window_size=14))
predictor = SamPredictor(model)
predictor.set_image_embedding(torch.randn(1, 256, 64, 64), (1200, 1800), (683, 1024))
points = np.random.default_rng(0).uniform([0, 0], [1799, 1199], size=(20, 2))
for point in points[:10]:
    predictor.predict(point[None], np.array([1]))
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for point in points[10:]:
    predictor.predict(point[None], np.array([1]))
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


# The image encoder's activations: vit_b's MLP makes two 4096 x 3072 float tensors (48 MB each)
# in every block, past glibc's largest mapping threshold (32 MiB). Ten blocks to warm up (the
# heap grows to its working size), then the faults of ten more.
LARGE_PROBE = """
import resource
import torch
import segany.modeling
torch.set_grad_enabled(False)
torch.manual_seed(0)
mlp = torch.nn.Sequential(torch.nn.Linear(768, 3072), torch.nn.GELU(), torch.nn.Linear(3072, 768))
x = torch.randn(4096, 768)
for _ in range(10):
    x = x + mlp(x)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    x = x + mlp(x)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


# glibc's starting thresholds, fixed: left alone, glibc raises them after freeing a large mapped
# block, so whether its defaults fault depends on what ran before the probe (a CI run once saw 4).
GLIBC_DEFAULT_THRESHOLDS = {"MALLOC_MMAP_THRESHOLD_": str(128 << 10), "MALLOC_TRIM_THRESHOLD_": str(128 << 10)}


def page_faults(probe: str, keep: str) -> int:
    environment = {**os.environ, OPT_OUT_VARIABLE: keep, **(GLIBC_DEFAULT_THRESHOLDS if keep == "0" else {})}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=environment)
    return int(result.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's (mallopt)")
def test_prompts_reuse_freed_memory_instead_of_faulting_it_in_again():
    kept, returned = page_faults(PROBE, "1"), page_faults(PROBE, "0")
    # glibc's defaults hand each prompt's larger temporaries back: thousands of faults a prompt.
    assert returned > 10 * 1000, f"only {returned} faults with glibc's defaults: the probe does not exercise them"
    assert kept < returned / 10, f"{kept} page faults with freed memory kept, {returned} without"


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's (mallopt)")
def test_blocks_past_the_largest_mapping_threshold_are_reused_too():
    kept, returned = page_faults(LARGE_PROBE, "1"), page_faults(LARGE_PROBE, "0")
    assert returned > 10 * 10_000, f"only {returned} faults with glibc's defaults: the probe does not exercise them"
    assert kept < returned / 10, f"{kept} page faults with freed memory kept, {returned} without"
