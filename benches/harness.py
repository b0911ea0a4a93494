"""Shared benchmark plumbing: run each side in its own process, time it, read its peak memory.

Each side runs in a fresh subprocess so that its peak resident memory (ru_maxrss) is its
own; sides alternate so that machine noise hits both alike. The helpers live in
:mod:`segany.speed.measure` (``segany bench`` uses them too); this module adds the
script-per-side convention of the benches.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from segany.speed.measure import kernel_cpu_s, peak_rss_mib, print_table, random_checkpoint, run_json, timed

REPO = Path(__file__).resolve().parents[1]
SAMPLE_IMAGE = REPO / "segany" / "assets" / "truck.jpg"

__all__ = [
    "REPO", "SAMPLE_IMAGE", "kernel_cpu_s", "peak_rss_mib", "print_table", "prompt_asker", "random_checkpoint", "run_side",
    "timed",
]


def run_side(script: Path, side: str, *args: str) -> dict:
    """Run ``script --side SIDE ARGS`` in a fresh process; it prints one JSON line of results."""
    return run_json([sys.executable, str(script), "--side", side, *args])


def prompt_asker(predictor: Any, image: np.ndarray, prompts: int) -> Callable[[], None]:
    """A call that asks the predictor for the next of ``prompts`` seeded random points (multimask):
    every side asks the same points in the same order."""
    rng = np.random.default_rng(0)
    height, width = image.shape[:2]
    points = rng.uniform([0, 0], [width - 1, height - 1], size=(prompts, 2))
    counter = iter(range(10**9))

    def ask() -> None:
        predictor.predict(points[next(counter) % prompts][None], np.array([1]), multimask_output=True)

    return ask
