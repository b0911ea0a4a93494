"""Shared benchmark plumbing: run each side in its own process, time it, read its peak memory.

Each side runs in a fresh subprocess so that its peak resident memory (ru_maxrss) is its
own; sides alternate so that machine noise hits both alike.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

REPO = Path(__file__).resolve().parents[1]
SAMPLE_IMAGE = REPO / "segany" / "assets" / "truck.jpg"


def random_checkpoint(name: str, seed: int = 0) -> Path:
    """Save seeded random weights of a named config to a temporary .pth file (shared by both sides)."""
    import segany

    torch.manual_seed(seed)
    model = segany.build_sam(name)
    path = Path(tempfile.mkdtemp(prefix="segany-bench-")) / f"random_{name}.pth"
    torch.save(model.state_dict(), path)
    return path


def timed(function: Callable[[], object], repeat: int) -> float:
    """Median wall time of ``repeat`` calls, in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_rss_mib() -> float:
    """This process's peak resident memory so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_side(script: Path, side: str, *args: str) -> dict:
    """Run ``script --side SIDE ARGS`` in a fresh process; it prints one JSON line of results."""
    output = subprocess.run(
        [sys.executable, str(script), "--side", side, *args], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def print_table(rows: list[tuple[str, float, float, str]]) -> None:
    """Rows of (measure, official, segany, unit); prints the official/segany ratio."""
    print(f"{'measure':<34}{'official':>12}{'segany':>12}{'ratio':>9}")
    for measure, official, ours, unit in rows:
        ratio = official / ours if ours else float("nan")
        print(f"{measure:<34}{official:>10.3f}{unit:>2}{ours:>10.3f}{unit:>2}{ratio:>8.2f}x")
