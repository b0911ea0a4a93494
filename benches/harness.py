"""Shared benchmark plumbing: run each side in its own process, time it, read its peak memory.

Each side runs in a fresh subprocess so that its peak resident memory (ru_maxrss) is its
own; sides alternate so that machine noise hits both alike. The helpers live in
:mod:`segany.speed.measure` (``segany bench`` uses them too); this module adds the
script-per-side convention of the benches.
"""

from __future__ import annotations

import sys
from pathlib import Path

from segany.speed.measure import kernel_cpu_s, peak_rss_mib, print_table, random_checkpoint, run_json, timed

REPO = Path(__file__).resolve().parents[1]
SAMPLE_IMAGE = REPO / "segany" / "assets" / "truck.jpg"

__all__ = ["REPO", "SAMPLE_IMAGE", "kernel_cpu_s", "peak_rss_mib", "print_table", "random_checkpoint", "run_side", "timed"]


def run_side(script: Path, side: str, *args: str) -> dict:
    """Run ``script --side SIDE ARGS`` in a fresh process; it prints one JSON line of results."""
    return run_json([sys.executable, str(script), "--side", side, *args])
